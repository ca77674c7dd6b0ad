"""Render a pruned checkpoint's model card (README.md with Hub YAML metadata) and its width-profile plot.

The metadata goes through huggingface_hub's ``ModelCardData`` (so it serialises exactly as the Hub expects,
model-index included); the body comes from a Jinja template — the one shipped in ``hub_cards/templates`` or
the user's own, which receives the same variables (listed at the top of the shipped template).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import amp_hf
from amp_hf.errors import OutputError
from amp_hf.files import eval_report
from amp_hf.files.artifacts import CARD_FILE, PLOT_FILE
from amp_hf.files.outputs import marker_lists, record_written

from .facts import CheckpointFacts, OnnxGraph, gather_facts
from .plot import width_profile_png

TEMPLATE_NAME = "model_card.md.jinja"
REPO_PLACEHOLDER = "<namespace>/<model-name>"

STAT_LABELS = {
    "params_total": "Parameters (whole model)",
    "params_tower": "Parameters (pruned tower)",
    "params_mlp": "Parameters (MLP blocks)",
    "flops_total": "FLOPs per sample (whole model)",
    "flops_tower": "FLOPs per sample (pruned tower)",
}
METHOD_NAMES = {"amp": "AMP", "dgmr": "DGMR", "imported-amp": "AMP (official weights)",
                "imported-dgmr": "DGMR (official weights)"}
METHOD_DESCRIPTIONS = {
    "amp": "AMP (Adaptive MLP Pruning): first-order Taylor importance under a label-free entropy criterion, "
    "with each layer's width found by binary search",
    "dgmr": "DGMR (Diversity-Guided MLP Reduction): data-free Gram-Schmidt selection of the most diverse "
    "input-weight rows",
    "imported-amp": "AMP, imported with `amp-hf import` from the official visresearch/AMP pruned weights "
    "(the source file's name, SHA-256 and layout are in the settings)",
    "imported-dgmr": "DGMR, imported with `amp-hf import` from the official visresearch/DGMR pruned weights "
    "(the source file's name, SHA-256 and layout are in the settings)",
    "magnitude": "weight magnitude (input-row norm x output-column norm)",
    "random": "uniformly random neurons (a baseline)",
}
# amp-hf eval task -> (Hub task type, readable name); "{modality}" becomes image / text.
EVAL_TASKS = {
    "knn": ("{modality}-classification", "kNN classification"),
    "top1": ("{modality}-classification", "top-1 classification"),
    "zeroshot": ("zero-shot-image-classification", "zero-shot classification"),
    "retrieval": ("retrieval", "image-text retrieval"),
    "fidelity": ("feature-extraction", "embedding fidelity to the unpruned model"),
}
CITATIONS = """@article{shen2026amp,
  title   = {Adaptive MLP Pruning for Large Vision Transformers},
  author  = {Shen, Chengchao},
  journal = {arXiv preprint arXiv:2603.08100},
  year    = {2026}
}

@article{shen2025dgmr,
  title   = {Diversity-Guided MLP Reduction for Efficient Large Vision Transformers},
  author  = {Shen, Chengchao and others},
  journal = {arXiv preprint arXiv:2506.08591},
  year    = {2025}
}"""


class CardTemplateError(ValueError):
    """A model-card template that cannot be read or rendered."""


def default_template() -> str:
    return resources.files("hub_cards").joinpath("templates", TEMPLATE_NAME).read_text(encoding="utf-8")


def card_data(facts: CheckpointFacts, model_name: str) -> ModelCardData:
    """The card's YAML metadata."""
    tags = ["amp-hf", "pruning", facts.family] + (["onnx"] if facts.onnx_graphs else [])
    if facts.sentence_transformers:
        tags += ["sentence-transformers", "feature-extraction"]
    eval_results = [
        EvalResult(
            task_type=_hub_task(entry.task, facts.adapter.modality),
            task_name=_task_name(entry.task),
            dataset_type=entry.dataset,
            dataset_name=entry.dataset_name or entry.dataset,
            dataset_split=entry.split,
            metric_type=entry.metric,
            metric_name=_metric_label(entry),
            metric_value=entry.value,
        )
        for entry in facts.evaluations
    ]
    return ModelCardData(
        model_name=model_name,
        base_model=facts.base_model,
        license=facts.license,
        library_name=facts.library_name,
        pipeline_tag=facts.pipeline_tag,
        tags=tags,
        datasets=facts.hub_datasets or None,
        eval_results=eval_results or None,
    )


def _hub_task(task: str, modality: str) -> str:
    return EVAL_TASKS.get(task, (task, None))[0].format(modality=modality)


def _task_name(task: str) -> str:
    return EVAL_TASKS.get(task, (None, task))[1]


def _metric_label(entry: eval_report.EvalResult) -> str:
    if entry.metric_name:
        return entry.metric_name
    return f"{entry.metric} (k={entry.k})" if entry.k is not None else entry.metric


def build_card(
    facts: CheckpointFacts, *, repo_id: str | None = None, template: str | os.PathLike | None = None
) -> ModelCard:
    """Render the card for ``facts``; ``repo_id`` fills the usage snippets (a placeholder otherwise)."""
    model_name = (repo_id or facts.path.resolve().name).split("/")[-1]
    if template is None:
        template_text = default_template()
    else:
        try:
            template_text = Path(template).read_text(encoding="utf-8")
        except OSError as error:
            raise CardTemplateError(f"cannot read the card template {template}: {error.strerror or error}") from error
    metadata, variables = card_data(facts, model_name), template_variables(facts, model_name, repo_id)
    name = template or TEMPLATE_NAME
    try:
        return ModelCard.from_template(metadata, template_str=template_text, **variables)
    except jinja2.TemplateError as error:
        where = f" (line {error.lineno})" if getattr(error, "lineno", None) else ""
        raise CardTemplateError(f"the card template {name} failed to render{where}: {error}") from error
    except (yaml.YAMLError, ValueError) as error:  # raised while ModelCard parses the rendered front matter
        raise CardTemplateError(
            f"the card template {name} rendered invalid YAML metadata ({' '.join(str(error).split())}): keep its "
            "first lines as "
            "'---', '{{ card_data }}', '---'"
        ) from error


def card_files(
    facts: CheckpointFacts, *, repo_id: str | None = None, template: str | os.PathLike | None = None
) -> dict[str, bytes]:
    """``{"README.md": ..., "width_profile.png": ...}`` as bytes, ready to write or upload."""
    card = build_card(facts, repo_id=repo_id, template=template)
    plot = width_profile_png(facts.widths, facts.original_widths)
    return {CARD_FILE: str(card).encode("utf-8"), PLOT_FILE: plot}


def write_card(
    checkpoint: str | os.PathLike,
    *,
    template: str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str | None = None,
    onnx_dir: str | os.PathLike | None = None,
    repo_id: str | None = None,
    overwrite_readme: bool = False,
) -> list[Path]:
    """Write README.md and width_profile.png into the checkpoint folder; returns the written paths.

    An existing file is replaced only when it is amp-hf's own (the folder's output marker lists it) or
    ``overwrite_readme`` says so: a hand-written README.md is refused before anything is written. Each file is
    replaced atomically (written beside it, then renamed), so a failure never leaves a truncated card.
    """
    facts = gather_facts(checkpoint, onnx_dir=onnx_dir, base_model=base_model, license=license)
    for name in (CARD_FILE, PLOT_FILE):
        existing = Path(checkpoint) / name
        if not overwrite_readme and (existing.exists() or existing.is_symlink()) and not marker_lists(checkpoint, name):
            raise OutputError(
                f"{existing} was not written by amp-hf, so the card will not replace it: pass --overwrite-readme "
                f"to replace it, move it away, or push it as it is with `amp-hf push --keep-card`"
            )
    written = []
    for name, content in card_files(facts, repo_id=repo_id, template=template).items():
        target = Path(checkpoint) / name
        _replace_file(target, content)
        written.append(target)
    record_written(checkpoint, [path.name for path in written])  # still amp-hf's folder for a later overwrite
    return written


def _replace_file(target: Path, content: bytes) -> None:
    # A plain open (not mkstemp, which makes 0600 files) so the card gets the same permissions as its folder.
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        staging.write_bytes(content)
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


# -- template variables ----------------------------------------------------------------------------------


def template_variables(facts: CheckpointFacts, model_name: str, repo_id: str | None) -> dict:
    """Everything the template may use (also documented at the top of the shipped template)."""
    repo = repo_id or REPO_PLACEHOLDER
    kept, original = sum(facts.widths), sum(facts.original_widths) if facts.original_widths else None
    return {
        "model_name": model_name,
        "repo_id": repo,
        "summary": _summary(facts, model_name),
        "facts": facts,
        "family": facts.family,
        "family_notes": facts.adapter.notes,
        "architecture": facts.architecture,
        "base_model_display": _base_model_markdown(facts),
        "license": facts.license,
        "method": facts.method,
        "method_description": METHOD_DESCRIPTIONS.get(str(facts.method).lower(), facts.method),
        "settings": sorted(facts.settings.items()),
        "distillation": sorted(facts.distillation.items()),
        "distillation_summary": _distillation_summary(facts),
        "datasets_display": ", ".join(f"`{d}`" for d in facts.datasets),
        "width_rows": _width_rows(facts),
        "kept_neurons": f"{kept:,}",
        "original_neurons": f"{original:,}" if original else None,
        "kept_percent": f"{100 * kept / original:.1f}%" if original else None,
        "stats_rows": _stats_rows(facts),
        "eval_rows": _eval_rows(facts),
        "eval_has_baseline": any(entry.baseline is not None for entry in facts.evaluations),
        "eval_sources": _report_files(facts),
        "onnx_rows": [_onnx_row(graph) for graph in facts.onnx_graphs],
        "onnx_options": _onnx_options(facts.onnx_options),
        "onnx_validated": any(graph.max_abs_diff is not None for graph in facts.onnx_graphs),
        "trtexec_commands": [graph.trtexec for graph in facts.onnx_graphs if graph.trtexec],
        "onnx_example": _onnx_example(repo, facts.onnx_graphs[0]) if facts.onnx_graphs else None,
        "amp_hf_example": _load_example(facts, repo, remote_code=False),
        "transformers_example": _load_example(facts, repo, remote_code=True),
        "sentence_transformers_example": _sentence_transformers_example(facts, repo),
        "plot_file": PLOT_FILE,
        "limitations": _limitations(facts),
        "citations": CITATIONS,
        "amp_hf_version": amp_hf.__version__,
    }


def _summary(facts: CheckpointFacts, model_name: str) -> str:
    base = _base_model_markdown(facts) or "its base model"
    method = f" using {METHOD_NAMES.get(str(facts.method).lower(), facts.method)}" if facts.method else ""
    text = f"**{model_name}** is {base} with hidden neurons of its MLP blocks removed by amp-hf{method}"
    if facts.original_widths:
        removed = 1 - sum(facts.widths) / sum(facts.original_widths)
        text += f": {100 * removed:.1f}% of the MLP neurons are gone"
    changes = [
        f"{_change(facts.stats[key])} {noun}"
        for key, noun in (("params_total", "parameters"), ("flops_total", "FLOPs"))
        if key in facts.stats and facts.stats[key]["before"]
    ]
    if changes:
        text += f" ({', '.join(changes)})"
    text += "."
    if facts.distillation:
        text += " The pruned model was then trained to match the unpruned one (distillation)."
    return text + " Every layer keeps its own width, and the checkpoint loads with `from_pretrained`."


def _distillation_summary(facts: CheckpointFacts) -> str | None:
    recipe = facts.distillation
    if not recipe:
        return None
    teacher = recipe.get("teacher", "")
    teacher = Path(teacher).name if os.path.isabs(teacher) else teacher  # local folders: their name only
    parts = [f"teacher `{teacher}`" if teacher else None,
             f"data `{recipe['data.source']}`" if "data.source" in recipe else None,
             f"{recipe['steps']} steps" if "steps" in recipe else None]  # fmt: skip
    return ", ".join(p for p in parts if p) or "recorded in config.json"


def _base_model_markdown(facts: CheckpointFacts) -> str | None:
    label = f" ({facts.base_model_label})" if facts.base_model_label else ""
    if facts.base_model:
        return f"[{facts.base_model}](https://huggingface.co/{facts.base_model}){label}"
    if facts.base_model_path:
        return f"`{Path(facts.base_model_path).name}` (a local model){label}"
    return facts.base_model_label


def _width_rows(facts: CheckpointFacts) -> list[dict]:
    rows = []
    for layer, kept in enumerate(facts.widths):
        original = facts.original_widths[layer] if facts.original_widths else None
        rows.append(
            {"layer": layer, "kept": kept, "original": original if original is not None else "—",
             "kept_percent": f"{100 * kept / original:.1f}%" if original else "—"}
        )  # fmt: skip
    return rows


def _change(values: dict) -> str:
    before, after = values.get("before"), values.get("after")
    if not before or after is None:
        return "—"
    return f"{100 * (after - before) / before:+.1f}%".replace("-", "−")


def _compact(count: int | None) -> str:
    if count is None:
        return "—"
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= threshold:
            return f"{count / threshold:.3g} {suffix}"
    return str(count)


def _stats_rows(facts: CheckpointFacts) -> list[dict]:
    rows = []
    for key, label in STAT_LABELS.items():
        values = facts.stats.get(key)
        if values is None:
            continue
        render = (lambda n: f"{n:,}" if n is not None else "—") if key.startswith("params") else _compact
        rows.append(
            {"label": label, "before": render(values["before"]), "after": render(values["after"]),
             "change": _change(values)}
        )  # fmt: skip
    return rows


def _report_files(facts: CheckpointFacts) -> list[str]:
    files = {entry.source for entry in facts.evaluations}
    files |= {entry.baseline_source for entry in facts.evaluations if entry.baseline_source}
    return sorted(files)


def _eval_rows(facts: CheckpointFacts) -> list[dict]:
    rows = []
    for entry in facts.evaluations:
        change = f"{entry.value - entry.baseline:+.4g}".replace("-", "−") if entry.baseline is not None else "—"
        rows.append(
            {**asdict(entry), "baseline": f"{entry.baseline:.4g}" if entry.baseline is not None else "—",
             "value": f"{entry.value:.4g}", "change": change, "split": entry.split or "—",
             "task": _task_name(entry.task), "metric": _metric_label(entry),
             "dataset": entry.dataset_name or entry.dataset}
        )  # fmt: skip
    return rows


def format_size(size: int) -> str:
    for threshold, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= threshold:
            return f"{size / threshold:.1f} {suffix}"
    return f"{size} B"


def _onnx_row(graph: OnnxGraph) -> dict:
    def describe(specs):
        return ", ".join(f"`{name}` {spec.dtype}[{', '.join(map(str, spec.shape))}]" for name, spec in specs.items())

    validated = f"{graph.max_abs_diff:.2g}" if graph.max_abs_diff is not None else "—"
    return {"path": f"onnx/{graph.path}", "size": format_size(graph.size_bytes), "opset": graph.opset or "—",
            "inputs": describe(graph.inputs), "outputs": describe(graph.outputs),
            "max_abs_diff": validated}  # fmt: skip


def _onnx_options(options: dict) -> str | None:
    shown = {key: options[key] for key in ("target", "dtype", "quantize", "ort_fusions") if options.get(key)}
    return ", ".join(f"{key} `{value}`" for key, value in shown.items()) or None


def _onnx_example(repo: str, graph: OnnxGraph) -> str:
    def ones(spec) -> str:  # symbolic dimensions (batch, sequence) become 1
        dims = [str(d) if isinstance(d, int) else "1" for d in spec.shape]
        return f"np.ones(({', '.join(dims)}{',' if len(dims) == 1 else ''}), dtype=np.{spec.dtype})"

    feeds = ",\n".join(f'    "{name}": {ones(spec)}' for name, spec in graph.inputs.items())
    return (
        "import numpy as np\n"
        "import onnxruntime as ort\n"
        "from huggingface_hub import snapshot_download\n\n"
        f'folder = snapshot_download("{repo}", allow_patterns=["onnx/*"])  # graphs + any external weights\n'
        "options = ort.SessionOptions()\n"
        "# ONNX Runtime's fused SkipLayerNormalization is slower on CPU than the Add + LayerNorm it fuses\n"
        'options.add_session_config_entry("optimization.disable_specified_optimizers", "SkipLayerNormFusion")\n'
        f'session = ort.InferenceSession(f"{{folder}}/onnx/{graph.path}", options, providers=["CPUExecutionProvider"])\n'
        f"outputs = session.run(None, {{\n{feeds},\n}})  # {', '.join(graph.outputs)}"
    )


# `import amp_hf` alone registers nothing (its package face is lazy): the snippets register explicitly.
REGISTER = "amp_hf.register_auto_classes()  # the pruned amp_* model types, for transformers' Auto classes"
# Every image card's snippet opens its input the same way; the family / generic lines then use ``image``.
IMAGE_INPUT = 'image = Image.open("image.jpg").convert("RGB")  # any image file'
EXAMPLE_TEXTS = '["a photo of a cat", "a photo of a dog"]'


def _load_example(facts: CheckpointFacts, repo: str, remote_code: bool) -> str:
    auto_class = facts.auto_class
    if remote_code:
        load = (f'model = {auto_class}.from_pretrained(\n    "{repo}", trust_remote_code=True, revision="main"  '
                "# pin a commit hash you have reviewed\n)")  # fmt: skip
    else:
        load = f'{REGISTER}\nmodel = {auto_class}.from_pretrained("{repo}")'
    lines = facts.adapter.usage_example(repo)  # family lines of an image model may use `image`
    reads_image = lines is not None and facts.adapter.modality == "image"
    if lines is None:
        lines, reads_image = _preprocessing_example(facts, repo)
    imports = [f"from transformers import {auto_class}"] + (["from PIL import Image"] if reads_image else [])
    body = []
    for line in lines.splitlines():
        (imports if line.startswith(("from ", "import ")) else body).append(line)
    while body and not body[0]:
        body.pop(0)
    notes = []  # leading comments ("needs timm installed") stay first
    while body and body[0].startswith("#"):
        notes.append(body.pop(0))
    body = notes + ([IMAGE_INPUT] if reads_image else []) + body
    return "\n".join(_import_block(imports, amp_hf=not remote_code) + ["", load, ""] + body)


def _import_block(imports: list[str], amp_hf: bool) -> list[str]:
    """The snippet's imports, sorted as ruff would, names from one module on one line (unless commented)."""
    merged: dict[str, set[str]] = {}
    kept = []
    for line in dict.fromkeys(imports):
        module, _, names = line.removeprefix("from ").partition(" import ")
        if line.startswith("from ") and "#" not in line:
            merged.setdefault(module, set()).update(name.strip() for name in names.split(","))
        else:
            kept.append(line)
    lines = kept + [f"from {module} import {', '.join(sorted(names))}" for module, names in merged.items()]
    return (["import amp_hf"] if amp_hf else []) + sorted(lines, key=lambda line: line.split()[1].lower())


def _preprocessing_example(facts: CheckpointFacts, repo: str) -> tuple[str, bool]:
    """Preprocessing from the checkpoint's own processor / tokenizer files, then the model's call, with what it
    returns: both towers' embeddings for an image-text model, the model's outputs otherwise. Also: whether the
    lines read ``image``."""
    spec = facts.adapter.model_class(facts.architecture).export
    graphs = {graph.modality: graph for graph in spec.graphs} if spec is not None else {}
    image_processor = f'from transformers import AutoImageProcessor\nprocessor = AutoImageProcessor.from_pretrained("{repo}")\n'
    tokenizer = f'from transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
    if len(graphs) > 1:  # an image-text model: each tower on its own (its forward wants both inputs)
        parts = []
        if facts.has_image_processor:
            parts.append(
                image_processor + "# the image embedding, in the space shared with the text embeddings\n"
                'image_embeds = model.get_image_features(**processor(images=image, return_tensors="pt")).pooler_output'
            )
        if facts.has_tokenizer:
            padding = '"max_length"' if graphs["text"].text_padding == "max_length" else "True"
            parts.append(
                tokenizer + f'texts = tokenizer({EXAMPLE_TEXTS}, padding={padding}, return_tensors="pt")\n'
                "text_embeds = model.get_text_features(**texts).pooler_output  # one embedding per text"
            )
        if parts:
            return "\n\n".join(parts), facts.has_image_processor
    elif facts.has_image_processor:
        return image_processor + _outputs(graphs) + 'outputs = model(**processor(images=image, return_tensors="pt"))', True
    elif facts.has_tokenizer:
        return tokenizer + _outputs(graphs) + 'outputs = model(**tokenizer(["a sentence"], return_tensors="pt"))', False
    source = f'"{facts.base_model}"' if facts.base_model else "the base model"
    return f"# no processor files are stored here: preprocess with the processor of {source}", False


def _outputs(graphs: dict) -> str:
    """A comment line naming what the model's call returns (from its export spec)."""
    if len(graphs) != 1:
        return ""
    (graph,) = graphs.values()
    if graph.outputs == ("logits",):
        return "# outputs.logits: one score per class (names: model.config.id2label)\n"
    names = "outputs." + ", .".join(graph.outputs)
    embedding = graph.embedding
    if embedding is None:
        return f"# {names}\n"
    pooled = {"cls": f"{embedding.output}[:, 0]",
              "masked_mean": f"{embedding.output} averaged over the attention mask"}  # fmt: skip
    return f"# {names}; one embedding per input: {pooled.get(embedding.pooling, embedding.output)}\n"


def _sentence_transformers_example(facts: CheckpointFacts, repo: str) -> str | None:
    settings = facts.sentence_transformers
    if not settings:
        return None
    onnx = any(graph.path == "model.onnx" for graph in facts.onnx_graphs)
    lines = [
        "import amp_hf  # or pass trust_remote_code=True instead of using amp_hf",
        "from sentence_transformers import SentenceTransformer",
        "",
        REGISTER,
        f'model = SentenceTransformer("{repo}")',
    ]
    if onnx:
        lines.append(f'# ONNX Runtime: SentenceTransformer("{repo}", backend="onnx") loads onnx/model.onnx')
    lines += [
        'embeddings = model.encode(["This is an example sentence", "Each sentence is converted"])',
        "similarities = model.similarity(embeddings, embeddings)",
    ]
    return "\n".join(lines)


def _limitations(facts: CheckpointFacts) -> list[str]:
    items = [
        (
            "Only hidden neurons of the MLP blocks were removed; attention, embeddings, norms and heads are the "
            f"base model's. amp-hf's notes on the {facts.family} family: {facts.adapter.notes}."
        )
    ]
    if facts.datasets:
        items.append(
            f"Neurons were selected using {', '.join(f'`{d}`' for d in facts.datasets)}; quality can differ on data "
            "unlike it, so evaluate on your own data (`amp-hf eval`)."
        )
    if facts.evaluations:
        items.append(
            "The evaluation numbers come from the report files shipped with the checkpoint "
            f"({', '.join(_report_files(facts))}); they were not verified independently."
        )
    else:
        items.append(
            "No evaluation report was shipped with this checkpoint: its quality after pruning is not measured here."
        )
    items.append(
        "Loading without amp-hf runs the modeling code stored in this repository (`trust_remote_code=True`): "
        "read it and pin a `revision` you have reviewed."
    )
    if facts.transformers_version:
        items.append(f"Saved with transformers {facts.transformers_version}; the modeling code needs transformers 5.x.")
    items.append(
        "FLOPs are counted by `torch.utils.flop_counter` for one sample at the native input size (a multiply-add "
        "is 2 FLOPs); measured speed-ups are usually smaller and depend on the hardware."
    )
    if facts.base_model or facts.base_model_path:
        items.append("This is a derivative of the base model: the base model's license and terms of use apply.")
    return items
