"""Feature distillation of pruned checkpoints from their unpruned teachers (as AMP and DGMR recover them), on 🤗 Accelerate.

``amp-hf distill`` (``amp_hf/cli/distill.py``) or, from Python::

    from amp_hf.files.config_utils import load_config
    from amp_hf.distill import DistillConfig, run_distillation
    run_distillation(load_config(DistillConfig, "configs/distill_minilm.yaml", ["output=out/minilm-distilled"]))

The package face is lazy (``amp_hf._lazy``): ``DistillConfig`` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

# Public name -> the module that defines it (imported on first access).
_LAZY_NAMES = {
    "DistillConfig": ".config",
    "distillation_losses": ".losses",
    "entropy_kl": ".losses",
    "logit_kd": ".losses",
    "masked_mse": ".losses",
    "run_distillation": ".trainer",
}

__all__ = ["DistillConfig", "distillation_losses", "entropy_kl", "logit_kd", "masked_mse", "run_distillation"]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, __all__)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .config import DistillConfig
    from .losses import distillation_losses, entropy_kl, logit_kd, masked_mse
    from .trainer import run_distillation
