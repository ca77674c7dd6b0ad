"""Everything a model card states about a pruned checkpoint, read from its folder — never from the network.

Sources (all but config.json optional; a missing source only removes its section from the card):

* ``config.json``: the architecture, the per-layer widths (``per_layer_config``, the source of truth) and
  the ``amp_pruning`` provenance written by ``amp-hf prune`` / ``amp-hf distill``: ``method``,
  ``original_widths``, ``base_model`` (Hub id, local path or the ``minilm`` alias), ``base_model_revision``,
  ``license``, ``datasets`` (a string or list), ``scoring_data`` (``"source:split"``), ``distillation``
  (the recipe; its ``data.source`` names a dataset), ``stats``; other scalar entries are shown as settings.
* ``prune_report.json`` (``amp-hf prune``): ``stats`` (``amp_hf.compare_stats`` output, ``{quantity:
  {"before", "after", ...}}``) and ``config`` (data sources). Without stats anywhere, params/FLOPs are
  measured with ``amp_hf.model_stats`` from config.json alone.
* ``eval_report*.json`` (``amp-hf eval``): ``{"model", "results": [...]}`` or a bare list of ``{"task",
  "dataset", "metric", "value"}`` with optional ``split``, ``k``, ``dataset_name``, ``metric_name`` and
  ``baseline`` (the unpruned model's value). A report whose ``model`` is the base model (``amp-hf eval <base>
  --output <checkpoint>/eval_report_base.json``) supplies the baselines of the matching results.
* ``modules.json`` and the other sentence-transformers files: a sentence-transformers model (library, pipeline
  tag, usage snippet).
* ONNX graphs: ``*.onnx`` under ``onnx/`` in the folder or under ``--onnx DIR``; inputs, outputs and opset are
  read from the graphs, validation results and export options from ``amp_export.json`` (``amp-hf export``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import yaml
from huggingface_hub import ModelCard, try_to_load_from_cache
from transformers.initialization import no_init_weights

from amp_hf import ADAPTERS, FamilyAdapter, model_stats
from amp_hf.checkpoint import CheckpointError, pruned_architecture
from amp_hf.families import MODEL_CLASSES
from amp_hf.files.aliases import EMBEDDED_HUB_IDS, embedded_model_path
from amp_hf.files.artifacts import EVAL_REPORT_GLOB, EXPORT_METADATA_FILE, ONNX_SUBFOLDER, PRUNE_REPORT_FILE
from amp_hf.files.eval_report import EvalResult
from amp_hf.files.provenance import hub_reference, is_hub_id
from amp_hf.files.reading import read_config
from amp_hf.files.sentence_transformers_format import read_modules, sentence_settings

logger = logging.getLogger(__name__)

STATS_KEYS = ("params_total", "params_tower", "params_mlp", "flops_total", "flops_tower")
# Hub dataset ids of amp-hf's built-in data sources that have one.
KNOWN_HUB_DATASETS = {"fashion_mnist": "zalando-datasets/fashion_mnist"}
# amp_pruning entries shown in their own sections (or duplicated there), not in the settings table.
_SECTION_KEYS = {
    "method", "widths", "original_widths", "base_model", "base_model_revision", "license", "datasets", "stats",
    "distillation", "params_before", "params_after", "flops_before", "flops_after",
}  # fmt: skip


@dataclass
class TensorSpec:
    shape: list[int | str]  # symbolic dimensions by name
    dtype: str  # numpy dtype name


@dataclass
class OnnxGraph:
    path: str  # relative to the ONNX folder, POSIX separators
    size_bytes: int  # the graph file plus any external-data files beside it
    opset: int | None
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    max_abs_diff: float | None = None  # ONNX Runtime vs PyTorch, from amp_export.json
    trtexec: str | None = None  # TensorRT build command, from amp_export.json


@dataclass
class CheckpointFacts:
    path: Path
    architecture: str
    adapter: FamilyAdapter
    widths: list[int]
    original_widths: list[int] | None = None
    method: str | None = None
    settings: dict[str, str] = field(default_factory=dict)  # other pruning provenance, for display
    distillation: dict[str, str] = field(default_factory=dict)  # the recipe, flattened, for display
    base_model: str | None = None  # a Hub repo id
    base_model_path: str | None = None  # as recorded, when it is a local path or an unknown name
    base_model_revision: str | None = None
    license: str | None = None
    datasets: list[str] = field(default_factory=list)  # data sources as recorded
    stats: dict[str, dict[str, int | None]] = field(default_factory=dict)  # quantity -> {"before", "after"}
    evaluations: list[EvalResult] = field(default_factory=list)
    onnx_folder: Path | None = None
    onnx_graphs: list[OnnxGraph] = field(default_factory=list)
    onnx_options: dict = field(default_factory=dict)  # export options from amp_export.json (dtype, target, ...)
    auto_map: dict[str, str] = field(default_factory=dict)
    transformers_version: str | None = None  # the version that saved the checkpoint
    has_image_processor: bool = False
    has_tokenizer: bool = False
    base_model_label: str | None = None  # the family's name for the model it was built from (open_clip's model id)
    sentence_transformers: dict | None = None  # modules / max_seq_length / prompts of a sentence-transformers model

    @property
    def family(self) -> str:
        return self.adapter.name

    @property
    def hub_datasets(self) -> list[str]:
        """The data sources that are Hub dataset ids (what the card metadata may list)."""
        ids = [KNOWN_HUB_DATASETS.get(source, source) for source in self.datasets]
        return list(dict.fromkeys(i for i in ids if is_hub_id(i)))

    @property
    def library_name(self) -> str:
        return "sentence-transformers" if self.sentence_transformers else "transformers"

    @property
    def pipeline_tag(self) -> str:
        if self.sentence_transformers:
            return "sentence-similarity"
        task = self.adapter.model_class(self.architecture).task
        if task == "feature-extraction" and self.adapter.modality == "image":
            return "image-feature-extraction"
        return task

    @property
    def auto_class(self) -> str:
        """The transformers Auto class whose ``auto_map`` entry loads this architecture."""
        for auto_class, reference in self.auto_map.items():
            if reference.endswith(f".{self.architecture}") and auto_class != "AutoConfig":
                return auto_class
        return "AutoModel"


def gather_facts(
    checkpoint: str | os.PathLike,
    *,
    onnx_dir: str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str | None = None,
) -> CheckpointFacts:
    """Read what the card needs from a pruned checkpoint folder (``base_model``/``license`` override it)."""
    path = Path(checkpoint)
    config = read_config(path)
    architecture = pruned_architecture(path, config, hint="model cards describe pruned models")
    provenance = dict(config.get("amp_pruning") or {})
    prune_report = _read_json(path / PRUNE_REPORT_FILE) or {}
    widths = _widths(config, provenance)
    original_widths = _int_list(provenance.get("original_widths"))
    if original_widths is not None and len(original_widths) != len(widths):
        logger.warning("amp_pruning.original_widths does not match the layer count; the card leaves it out")
        original_widths = None
    base_id, base_path, base_revision = _split_base_model(
        base_model or provenance.get("base_model"), provenance.get("base_model_revision")
    )
    adapter = _adapter_for(architecture)
    if base_id is None:  # e.g. a local copy of a timm Hub folder, or open_clip's `hf-hub:org/name`: the config names it
        base_id = adapter.hub_base_model(config)
    onnx_folder = _onnx_folder(path, onnx_dir)
    export_metadata = (_read_json(onnx_folder / EXPORT_METADATA_FILE) or {}) if onnx_folder else {}
    return CheckpointFacts(
        path=path,
        architecture=architecture,
        adapter=adapter,
        widths=widths,
        original_widths=original_widths,
        method=provenance.get("method"),
        settings=_display(_flatten({k: v for k, v in provenance.items() if k not in _SECTION_KEYS})),
        distillation=_display(_flatten(provenance.get("distillation") or {})),
        base_model=base_id,
        base_model_path=base_path,
        base_model_revision=base_revision,
        license=license or provenance.get("license") or base_model_license(base_id, base_path, base_revision),
        datasets=_datasets(provenance, prune_report.get("config") or {}),
        stats=_stats(prune_report) or _stats(provenance) or measure_stats(path, architecture, original_widths),
        evaluations=read_eval_reports(path, _names_of(base_model or provenance.get("base_model"), base_id)),
        onnx_folder=onnx_folder,
        onnx_graphs=read_onnx_graphs(onnx_folder, export_metadata) if onnx_folder else [],
        onnx_options=dict(export_metadata.get("options") or {}),
        auto_map=dict(config.get("auto_map") or {}),
        transformers_version=config.get("transformers_version"),
        has_image_processor=(path / "preprocessor_config.json").is_file(),
        has_tokenizer=(path / "tokenizer_config.json").is_file() or adapter.stores_processor(path),
        base_model_label=adapter.base_model_label(config),
        sentence_transformers=sentence_settings(path) if read_modules(path) else None,
    )


def _read_json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("ignoring %s: not readable JSON (%s)", path.name, error)
        return None


# -- provenance ---------------------------------------------------------------------------------------


def _adapter_for(architecture: str) -> FamilyAdapter:
    for adapter in ADAPTERS.values():
        if architecture in {entry.amp.__name__ for entry in adapter.classes}:
            return adapter
    raise CheckpointError(f"no amp-hf family adapter knows the architecture {architecture}")


def _widths(config: dict, provenance: dict) -> list[int]:
    # per_layer_config sits in the sub-config of the pruned tower for composite models (CLIP, SigLIP).
    for holder in (config, *(v for v in config.values() if isinstance(v, dict))):
        per_layer = holder.get("per_layer_config")
        if per_layer:
            return [int(per_layer[key]["intermediate_size"]) for key in sorted(per_layer, key=int)]
    widths = _int_list(provenance.get("widths"))
    if widths is None:
        raise CheckpointError("config.json records no per-layer widths (per_layer_config): the checkpoint is corrupt")
    return widths


def _int_list(values) -> list[int] | None:
    if not isinstance(values, list) or not values:
        return None
    return [int(v) for v in values]


def _flatten(values: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _display(values: dict[str, object]) -> dict[str, str]:
    """Values as short display strings (None dropped, long lists summarised)."""
    shown = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list) and len(value) > 8:
            value = f"[{len(value)} values]"
        elif isinstance(value, float):
            value = f"{value:.6g}"
        shown[key] = json.dumps(value) if isinstance(value, (list, bool)) else str(value)
    return shown


def _datasets(provenance: dict, prune_config: dict) -> list[str]:
    """Data sources named in the provenance and the prune command's config, first-seen order."""
    found: list[str] = []
    recorded = provenance.get("datasets")
    found += [recorded] if isinstance(recorded, str) else [str(d) for d in recorded or []]
    if isinstance(provenance.get("scoring_data"), str):
        found.append(provenance["scoring_data"].split(":")[0])

    def walk(values: dict) -> None:  # nested amp_hf.data.DataConfig mappings carry a "source"
        for value in values.values():
            if isinstance(value, dict):
                if isinstance(value.get("source"), str):
                    found.append(value["source"])
                walk(value)

    walk(provenance)
    walk(prune_config)
    return list(dict.fromkeys(found))


def _split_base_model(recorded: str | None, revision: str | None) -> tuple[str | None, str | None, str | None]:
    """(Hub repo id, local path or name, revision) of the recorded base model (``amp_hf.files.provenance.hub_reference``:
    a Hub id, amp-hf's embedded default, a HF cache snapshot, a folder whose card names its id)."""
    if not recorded:
        return None, None, revision
    repo_id, snapshot_revision = hub_reference(recorded)
    return repo_id, None if repo_id == recorded else recorded, revision or snapshot_revision


def _names_of(recorded: str | None, hub_id: str | None) -> set[str]:
    """The names an evaluation report may give the base model: as recorded, its Hub id, its alias."""
    names = {name for name in (recorded, hub_id) if name}
    names |= {alias for alias, known in EMBEDDED_HUB_IDS.items() if known == hub_id}
    return names


def base_model_license(repo_id: str | None, local_path: str | None, revision: str | None) -> str | None:
    """The base model's license from its model card, if that card is on disk (local folder or HF cache)."""
    readme: str | None = None
    embedded = [alias for alias, known in EMBEDDED_HUB_IDS.items() if known == repo_id]
    if not local_path and embedded:  # amp-hf's offline copy of that repo carries its card
        local_path = embedded_model_path(embedded[0], required=False)
    if local_path and (Path(local_path) / "README.md").is_file():
        readme = str(Path(local_path) / "README.md")
    elif repo_id:
        cached = try_to_load_from_cache(repo_id, "README.md", revision=revision)
        readme = cached if isinstance(cached, str) else None
    if readme is None:
        return None
    try:
        return ModelCard.load(readme).data.license
    except (OSError, ValueError, yaml.YAMLError) as error:  # a malformed third-party card must not stop ours
        logger.warning("could not read the base model's license from %s: %s", readme, error)
        return None


# -- size and compute ---------------------------------------------------------------------------------


def _stats(source: dict) -> dict[str, dict[str, int | None]]:
    recorded = source.get("stats")
    if not isinstance(recorded, dict):
        return {}
    return {
        key: {"before": int(value["before"]), "after": int(value["after"])}
        for key, value in recorded.items()
        if isinstance(value, dict) and "before" in value and "after" in value
    }


def measure_stats(
    checkpoint: Path, architecture: str, original_widths: list[int] | None
) -> dict[str, dict[str, int | None]]:
    """Params/FLOPs with ``amp_hf.model_stats``: the pruned architecture and, when the original widths are
    known, the same architecture at those widths. Built from config.json only (no weights are read)."""
    model_class = MODEL_CLASSES[architecture]
    config = model_class.config_class.from_pretrained(checkpoint)
    with no_init_weights():  # stats depend on shapes only: skip the random init
        pruned = model_class(config).eval()
    after = model_stats(pruned)
    before = None
    if original_widths is not None:
        adapter = _adapter_for(architecture)
        with no_init_weights():
            unpruned = model_class(adapter.pruned_config(pruned, original_widths, None)).eval()
        before = model_stats(unpruned)
    return {key: {"before": before[key] if before else None, "after": after[key]} for key in STATS_KEYS}


# -- evaluation reports -------------------------------------------------------------------------------


def read_eval_reports(checkpoint: Path, base_model_names: Collection[str] = ()) -> list[EvalResult]:
    """Results from every ``eval_report*.json`` in the folder; malformed entries are skipped with a warning.

    A report whose ``model`` is one of ``base_model_names`` holds the unpruned model's numbers: they become
    the ``baseline`` of the matching results (same task, dataset, split, metric and k) instead of rows.
    """
    entries, baselines = [], {}
    for report in sorted(checkpoint.glob(EVAL_REPORT_GLOB)):
        data = _read_json(report)
        results = data.get("results", []) if isinstance(data, dict) else data
        of_base_model = isinstance(data, dict) and data.get("model") in base_model_names
        for result in results if isinstance(results, list) else []:
            entry = EvalResult.from_row(result, report.name)
            if entry is None:
                logger.warning("skipping a result in %s: needs task, dataset, metric and a numeric value", report.name)
            elif of_base_model:
                baselines[entry.identity] = (entry.value, report.name)
            else:
                entries.append(entry)
    for entry in entries:
        if entry.baseline is None and entry.identity in baselines:
            entry.baseline, entry.baseline_source = baselines[entry.identity]
    return entries


# -- ONNX -----------------------------------------------------------------------------------------------


def _onnx_folder(checkpoint: Path, onnx_dir: str | os.PathLike | None) -> Path | None:
    if onnx_dir is None:
        inside = checkpoint / ONNX_SUBFOLDER
        return inside if any(inside.rglob("*.onnx")) else None
    folder = Path(onnx_dir)
    if not any(folder.rglob("*.onnx")):
        raise FileNotFoundError(
            f"no .onnx graph under {folder}: export one first (`amp-hf export {checkpoint} {folder}`) or drop --onnx"
        )
    return folder


def read_onnx_graphs(folder: Path, export_metadata: dict | None = None) -> list[OnnxGraph]:
    """Inputs, outputs and opset of every ``*.onnx`` graph under ``folder`` (weights are not loaded), with
    the validation result and TensorRT command ``amp_export.json`` records for it."""
    export_metadata = export_metadata or {}
    tensorrt = export_metadata.get("tensorrt") or {}
    # graph name -> entry; the entry names its file, TensorRT profiles are keyed by the graph name
    recorded = {entry.get("file"): (name, entry) for name, entry in (export_metadata.get("graphs") or {}).items()}
    graphs = []
    for graph_path in sorted(folder.rglob("*.onnx")):
        model = onnx.load(str(graph_path), load_external_data=False)
        initializers = {init.name for init in model.graph.initializer}
        external = {
            entry.value
            for init in model.graph.initializer
            if init.data_location == onnx.TensorProto.EXTERNAL
            for entry in init.external_data
            if entry.key == "location"
        }
        relative = graph_path.relative_to(folder).as_posix()
        size = graph_path.stat().st_size + sum((graph_path.parent / name).stat().st_size for name in external)
        graph_name, export_entry = recorded.get(relative, (None, {}))
        outputs_checked = ((export_entry.get("validation") or {}).get("outputs") or {}).values()
        differences = [o["max_abs_diff"] for o in outputs_checked if isinstance(o, dict) and "max_abs_diff" in o]
        graphs.append(
            OnnxGraph(
                path=relative,
                size_bytes=size,
                opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
                inputs={v.name: _tensor_spec(v) for v in model.graph.input if v.name not in initializers},
                outputs={v.name: _tensor_spec(v) for v in model.graph.output},
                max_abs_diff=max(differences) if differences else None,
                trtexec=(tensorrt.get(graph_name) or {}).get("trtexec"),
            )
        )
    return graphs


def _tensor_spec(value_info) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]
    return TensorSpec(shape, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name)
