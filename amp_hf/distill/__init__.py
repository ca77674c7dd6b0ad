"""Feature distillation of pruned checkpoints from their unpruned teachers (as AMP and DGMR recover them), on 🤗 Accelerate.

``amp-hf distill`` (``amp_hf/cli/distill.py``) or, from Python::

    from amp_hf.files.config_utils import load_config
    from amp_hf.distill import DistillConfig, run_distillation
    run_distillation(load_config(DistillConfig, "configs/distill_minilm.yaml", ["output=out/minilm-distilled"]))
"""

from .config import DistillConfig
from .losses import distillation_losses, entropy_kl, logit_kd, masked_mse
from .trainer import run_distillation

__all__ = ["DistillConfig", "distillation_losses", "entropy_kl", "logit_kd", "masked_mse", "run_distillation"]
