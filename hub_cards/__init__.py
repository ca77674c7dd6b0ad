"""Model cards and one-commit Hub pushes for amp-hf pruned checkpoints.

``write_card(checkpoint)`` writes README.md (Hub metadata, per-layer width table, params/FLOPs, evaluation
results, loading and ONNX usage, citations, limitations) and width_profile.png into the folder;
``plan_upload`` lists what a push sends (no network) and ``push_to_hub`` sends it to the Hub in a single commit.
"""

from .card import CARD_FILE, PLOT_FILE, CardTemplateError, build_card, card_data, card_files, write_card
from .facts import CheckpointFacts, OnnxGraph, gather_facts
from .plot import width_profile_png
from .push import Backoff, HubPushError, PushResult, UploadFile, UploadPlan, plan_upload, push_to_hub

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
