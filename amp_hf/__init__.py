"""amp-hf: prune the MLP hidden neurons of Hugging Face vision transformers and text encoders (AMP, DGMR),
and ship the result as ordinary `from_pretrained`-loadable checkpoints.

The package face is lazy (PEP 562): ``import amp_hf`` imports neither torch nor transformers, so the command
line answers ``--help`` and refuses bad arguments at once. A public name imports its module on first use; the
first use of any of them (or of ``amp_hf.families``) registers the pruned ``amp_*`` model types with
transformers' Auto classes (``amp_hf.register_auto_classes()`` does it explicitly).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__

# Public name -> the module that defines it (imported on first access).
_LAZY_NAMES = {
    "ADAPTERS": ".families",
    "CheckpointError": ".checkpoint",
    "FamilyAdapter": ".families",
    "MlpStack": ".families",
    "NeuronMap": ".models",
    "PlanError": ".plan",
    "PrunePlan": ".plan",
    "UnsupportedModelError": ".families",
    "__version__": "._version",
    "atomic_directory": ".checkpoint",
    "compare_stats": ".accounting",
    "count_flops": ".accounting",
    "count_parameters": ".accounting",
    "get_adapter": ".families",
    "is_pruned_checkpoint": ".checkpoint",
    "keep_all_plan": ".slicing",
    "load_model": ".loading",
    "load_open_clip_folder": ".families.open_clip",
    "load_pruned": ".checkpoint",
    "load_timm_folder": ".families.timm",
    "model_stats": ".accounting",
    "resolve": ".families",
    "resolve_model_path": ".loading",
    "resolve_reference": ".files.model_reference",
    "ModelReference": ".files.model_reference",
    "HubReferenceError": ".files.model_reference",
    "save_pruned": ".checkpoint",
    "slice_model": ".slicing",
    "slice_state_dict": ".slicing",
    "supported_models": ".families",
    "top_indices": ".plan",
    "wrap_open_clip": ".families.open_clip",
    "wrap_timm": ".families.timm",
    "register_auto_classes": ".families.registry",
}

__all__ = [
    "ADAPTERS",
    "CheckpointError",
    "FamilyAdapter",
    "HubReferenceError",
    "MlpStack",
    "ModelReference",
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
    "register_auto_classes",
    "resolve",
    "resolve_model_path",
    "resolve_reference",
    "save_pruned",
    "slice_model",
    "slice_state_dict",
    "supported_models",
    "top_indices",
    "wrap_open_clip",
    "wrap_timm",
]



def _register_auto_classes() -> None:
    importlib.import_module(".families.registry", __name__)  # registering is a side effect of the family table


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, __all__, _register_auto_classes)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .accounting import compare_stats, count_flops, count_parameters, model_stats
    from .checkpoint import CheckpointError, atomic_directory, is_pruned_checkpoint, load_pruned, save_pruned
    from .families import ADAPTERS, FamilyAdapter, MlpStack, UnsupportedModelError, get_adapter, resolve, supported_models
    from .families.open_clip import load_open_clip_folder, wrap_open_clip
    from .families.timm import load_timm_folder, wrap_timm
    from .files.model_reference import HubReferenceError, ModelReference, resolve_reference
    from .loading import load_model, resolve_model_path
    from .models import NeuronMap
    from .plan import PlanError, PrunePlan, top_indices
    from .slicing import keep_all_plan, slice_model, slice_state_dict
