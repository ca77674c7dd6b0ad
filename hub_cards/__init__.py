"""Model cards and one-commit Hub pushes for amp-hf pruned checkpoints.

``write_card(checkpoint)`` writes README.md (Hub metadata, per-layer width table, params/FLOPs, evaluation
results, loading and ONNX usage, citations, limitations) and width_profile.png into the folder;
``plan_upload`` lists what a push sends (no network) and ``push_to_hub`` sends it to the Hub in a single commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amp_hf._lazy import lazy_attributes

# Public name -> the module that defines it, imported on first use (PEP 562): importing the package stays cheap.
_LAZY_NAMES = {
    "Backoff": ".push",
    "CARD_FILE": ".card",
    "CardTemplateError": ".card",
    "CheckpointFacts": ".facts",
    "HubPushError": ".push",
    "OnnxGraph": ".facts",
    "PLOT_FILE": ".card",
    "PushResult": ".push",
    "UploadFile": ".push",
    "UploadPlan": ".push",
    "build_card": ".card",
    "card_data": ".card",
    "card_files": ".card",
    "gather_facts": ".facts",
    "plan_upload": ".push",
    "push_to_hub": ".push",
    "width_profile_png": ".plot",
    "write_card": ".card",
}

__all__ = [
    "CARD_FILE",
    "PLOT_FILE",
    "Backoff",
    "CardTemplateError",
    "CheckpointFacts",
    "HubPushError",
    "OnnxGraph",
    "PushResult",
    "UploadFile",
    "UploadPlan",
    "build_card",
    "card_data",
    "card_files",
    "gather_facts",
    "plan_upload",
    "push_to_hub",
    "width_profile_png",
    "write_card",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, __all__)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .card import CARD_FILE, PLOT_FILE, CardTemplateError, build_card, card_data, card_files, write_card
    from .facts import CheckpointFacts, OnnxGraph, gather_facts
    from .plot import width_profile_png
    from .push import Backoff, HubPushError, PushResult, UploadFile, UploadPlan, plan_upload, push_to_hub
