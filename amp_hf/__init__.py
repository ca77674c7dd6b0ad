"""amp-hf: prune the MLP hidden neurons of Hugging Face vision transformers and text encoders (AMP, DGMR),
and ship the result as ordinary `from_pretrained`-loadable checkpoints.

Importing the package registers the pruned ``amp_*`` model types with transformers' Auto classes.
"""

from . import models  # noqa: F401  (registers the amp_* types with the Auto classes)
from ._version import __version__
from .accounting import compare_stats, count_flops, count_parameters, model_stats
from .checkpoint import CheckpointError, atomic_directory, is_pruned_checkpoint, load_pruned, save_pruned
from .families import ADAPTERS, FamilyAdapter, MlpStack, UnsupportedModelError, get_adapter, resolve, supported_models
from .families.open_clip import load_open_clip_folder, wrap_open_clip
from .families.timm import load_timm_folder, wrap_timm
from .loading import load_model, resolve_model_path
from .models import NeuronMap
from .plan import PlanError, PrunePlan, top_indices
from .slicing import keep_all_plan, slice_model, slice_state_dict

__all__ = [
    "ADAPTERS",
    "CheckpointError",
    "FamilyAdapter",
    "MlpStack",
    "NeuronMap",
    "PlanError",
    "PrunePlan",
    "UnsupportedModelError",
    "__version__",
    "atomic_directory",
    "compare_stats",
    "count_flops",
    "count_parameters",
    "get_adapter",
    "is_pruned_checkpoint",
    "keep_all_plan",
    "load_open_clip_folder",
    "load_timm_folder",
    "load_model",
    "load_pruned",
    "model_stats",
    "resolve",
    "resolve_model_path",
    "save_pruned",
    "slice_model",
    "slice_state_dict",
    "supported_models",
    "top_indices",
    "wrap_open_clip",
    "wrap_timm",
]
