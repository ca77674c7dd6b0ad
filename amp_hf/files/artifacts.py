"""Every file name amp-hf writes and reads back, declared once for writers and readers alike (checkpoint,
scores, reports, export, card, demo). Output folders are recognised by them (``outputs``)."""

from __future__ import annotations

CONFIG_FILE = "config.json"  # transformers' config (architecture, widths, amp_pruning provenance)
PLAN_FILE = "amp_plan.json"  # kept neuron indices of a pruned checkpoint
PRUNE_REPORT_FILE = "prune_report.json"  # `amp-hf prune`: stats, config, timings
SCORES_FILE = "scores.safetensors"  # `amp-hf score`: per-neuron scores
SCORES_META_FILE = "scores.json"  # `amp-hf score`: what the scores were computed on
EVAL_REPORT_FILE = "eval_report.json"  # `amp-hf eval` (format: eval_report.py)
EVAL_REPORT_GLOB = "eval_report*.json"  # every report the card reads: EVAL_REPORT_FILE and renamed copies
BASE_EVAL_REPORT_FILE = "eval_report_base.json"  # the unpruned model's numbers, beside the pruned checkpoint
EVAL_REPORT_SCHEMA = "amp-hf/eval-report/1"
ONNX_SUBFOLDER = "onnx"  # where a checkpoint's exported graphs live (and are pushed)
EXPORT_METADATA_FILE = "amp_export.json"  # `amp-hf export`: graphs, options, validation
CARD_FILE = "README.md"  # the model card
PLOT_FILE = "width_profile.png"  # the card's per-layer width plot
REFERENCE_RECORD_FILE = "reference.json"  # the reference ViT's training record
DEMO_SUMMARY_FILE = "summary.json"  # `amp-hf demo`
OUTPUT_MARKER = ".amp-hf-output.json"  # what amp-hf wrote into an output folder (``outputs``)

# transformers' preprocessing files (what AutoImageProcessor / AutoTokenizer / AutoProcessor read from a model
# folder): carried from a model's folder into its pruned checkpoint and its export.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
)
