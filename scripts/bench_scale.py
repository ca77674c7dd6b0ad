#!/usr/bin/env python
"""Benchmark: how every stage's wall time and peak memory grow with the model (issue 27).

Random-weight CLIP image towers (transformers ``CLIPVisionModel``, never downloaded) at the published OpenCLIP
shapes S/16, B/16, L/14, H/14, g/14 (224 px), a fixed small sample count, CPU. Every stage of every shape runs
in its own subprocess, chained through files in ``--work`` (base folder -> scores -> plan -> pruned checkpoint
-> ONNX export), so each row is one run and the chain is the real pipeline:

  setup          build the random tower, save it as a model folder (not a measured stage)
  score          Taylor scoring (forward + backward per batch)
  search         AMP's adaptive search with the layer-input cache
  score_bf16     Taylor scoring under bf16 autocast (scoring.precision=bf16; scores not kept)
  search_nocache the same search with cache_gb=0 (every candidate a full pass); widths must agree
  search_bounded the same search with the cache bounded to ~1/3 of its full size (strided layer inputs)
  slice          slice the search's plan and save the pruned checkpoint (safetensors)
  reload         load that checkpoint with transformers alone (amp_hf blocked) and compare its output
  reconstruct    post-hoc reconstruction of the same plan (per-layer float64 Gram matrices, streamed)
  export         ONNX export with external data + validation under onnxruntime
  import_setup   a DINOv2 tower of the same shape, pruned by hand and written in the facebookresearch layout
  import         ``amp-hf import`` of that official-layout file (not a measured stage: import_setup)

Each phase of a stage reports its wall time and peak RSS (``VmHWM`` reset through ``/proc/self/clear_refs``
at the phase's start, so it is the phase's own peak; the CUDA peak too where a GPU is used). The search
accepts every candidate (``delta_e`` huge), so every shape runs the same number of evaluations and the plan
keeps the top-Taylor H/2^steps neurons of every layer. The report fits cost ∝ params^k per phase (log-log
least squares) and checks the memory goal: peak <= 1.5 x the fp32 weights of the phase's input model + the
phase's stated working set + the interpreter's own RSS. Resumable: rows are saved after every stage and a
finished (shape, stage) is not run again unless ``--redo`` names it.

  python scripts/bench_scale.py --shapes S16,B16,L14              # -> docs/bench_scale.{json,md,png}
  python scripts/bench_scale.py --shapes g14 --work /data/scale   # the ViT-g/14 end-to-end chain
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# OpenCLIP image towers (open_clip model_configs ViT-*-{16,14}.json): width, layers, heads, MLP width, patch.
SHAPES = {
    "S16": (384, 12, 6, 1536, 16),
    "B16": (768, 12, 12, 3072, 16),
    "L14": (1024, 24, 16, 4096, 14),
    "H14": (1280, 32, 16, 5120, 14),
    "g14": (1408, 40, 16, 6144, 14),
}
# in dependency order, the end-to-end chain first and the slow search variants last
STAGES = ("setup", "score", "search", "slice", "reload", "export", "import_setup", "import", "reconstruct",
          "search_nocache", "search_bounded", "score_bf16")
UNMEASURED = ("setup", "import_setup")  # they make the inputs of the measured stages
IMAGE = 224
GB = 2**30


# -- measuring ----------------------------------------------------------------------------------------------


def _status() -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) * 1024 / GB
    return values


def _reset_peak() -> bool:
    """Make VmHWM the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Wall time and peak memory of consecutive phases of one process."""

    def __init__(self):
        self.phases: list[dict] = []
        self.extra: dict = {}

    def phase(self, name: str):
        meter = self

        class _Phase:
            def __enter__(self):
                import torch

                self.reset = _reset_peak()
                self.start_rss = _status()["VmRSS"]
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                self.started = time.perf_counter()
                self.cpu = time.process_time()
                return self

            def __exit__(self, *exc):
                import torch

                seconds = time.perf_counter() - self.started
                cpu = time.process_time() - self.cpu
                status = _status()
                row = {"phase": name, "time_s": round(seconds, 3), "cpu_s": round(cpu, 3), "start_rss_gb": round(self.start_rss, 4),
                       "peak_rss_gb": round(status["VmHWM"], 4), "end_rss_gb": round(status["VmRSS"], 4),
                       "peak_is_phase_own": self.reset}
                if torch.cuda.is_available():
                    row["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / GB, 4)
                meter.phases.append(row)
                return False

        return _Phase()


# -- the stages (run in a worker subprocess) ---------------------------------------------------------------


def clip_config(shape: str):
    from transformers import CLIPVisionConfig

    width, layers, heads, mlp, patch = SHAPES[shape]
    return CLIPVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                            num_attention_heads=heads, patch_size=patch, image_size=IMAGE, hidden_act="gelu",
                            projection_dim=width)


def image_batches(count: int, size: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(size, 3, IMAGE, IMAGE, generator=generator)} for _ in range(count)]


def _criterion():
    from amp_hf.selection import CriterionConfig, build_criterion

    return build_criterion(CriterionConfig(name="entropy"))


def _load_base(meter: Meter, folder: Path):
    import amp_hf

    with meter.phase("load"):
        model = amp_hf.load_model(str(folder)).eval()
    return amp_hf.resolve(model)


def stage_setup(args, work: Path, meter: Meter) -> None:
    import torch
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    with meter.phase("build"):
        model = CLIPVisionModel(clip_config(args.shape)).eval()
    with meter.phase("save_base"):
        model.save_pretrained(work / "base")
    meter.extra["params"] = sum(p.numel() for p in model.parameters())
    meter.extra["mlp_params"] = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)


def stage_score(args, work: Path, meter: Meter, precision: str = "fp32") -> None:
    from amp_hf.selection import NeuronScores, taylor_scores

    stack = _load_base(meter, work / "base")
    batches = image_batches(args.score_batches, args.batch_size, seed=1)
    criterion = _criterion()
    with meter.phase("score" if precision == "fp32" else f"score_{precision}"):
        scores = taylor_scores(stack, batches, criterion, precision=precision)
    meter.extra["samples"] = scores.num_samples
    if precision == "fp32":
        scores.save(work / "scores")
    else:  # how closely the half-precision scores rank the neurons like the float32 ones
        exact = NeuronScores.load(work / "scores")
        ranks = [torch_spearman(a, b) for a, b in zip(exact.abs, scores.abs)]
        meter.extra["spearman_to_fp32"] = {"min": round(min(ranks), 4), "mean": round(sum(ranks) / len(ranks), 4)}


def torch_spearman(a, b) -> float:
    import torch

    ranks = [x.argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def _search(args, work: Path, meter: Meter, variant: str) -> None:
    from amp_hf import PrunePlan
    from amp_hf.selection import CriterionEvaluator, NeuronScores, adaptive_search

    stack = _load_base(meter, work / "base")
    scores = NeuronScores.load(work / "scores")
    batches = image_batches(args.search_batches, args.batch_size, seed=2)
    width, layers, _, mlp, patch = SHAPES[args.shape]
    tokens = (IMAGE // patch) ** 2 + 1
    full_cache_gb = layers * len(batches) * args.batch_size * tokens * width * 4 / GB
    cache_gb = {"search": 1e6, "search_nocache": 0.0, "search_bounded": full_cache_gb / 3}[variant]
    evaluator = CriterionEvaluator(stack, _criterion(), batches, cache_gb=cache_gb)
    with meter.phase(variant):
        # delta_e huge: every candidate is accepted, so the evaluation count is the same for every shape
        result = adaptive_search(stack, scores.abs, evaluator, delta_e=1e9, steps=args.search_steps, progress=False)
    meter.extra.update(evaluations=result.evaluations, widths=result.widths, cache_gb=round(min(cache_gb, 1e3), 4),
                       full_cache_gb=round(full_cache_gb, 4),
                       cached_layers=sum(x is not None for x in evaluator.layer_inputs or []))
    plan = PrunePlan(stack.widths(), result.kept, "amp", {"allocation": "adaptive", "steps": args.search_steps})
    if variant == "search":
        plan.save(work / "plan.json")
    else:
        reference = PrunePlan.load(work / "plan.json")
        meter.extra["same_plan_as_cached_search"] = reference.kept == plan.kept


def stage_slice(args, work: Path, meter: Meter) -> None:
    import torch

    from amp_hf import PrunePlan, save_pruned
    from amp_hf.slicing import slice_stack

    stack = _load_base(meter, work / "base")
    plan = PrunePlan.load(work / "plan.json")
    with meter.phase("slice"):
        pruned = slice_stack(stack, plan, {"method": "amp"})
    with meter.phase("save"):
        save_pruned(pruned.model, work / "pruned", plan, overwrite=True)
    meter.extra["pruned_params"] = sum(p.numel() for p in pruned.model.parameters())
    meter.extra["checkpoint_files"] = sorted(p.name for p in (work / "pruned").glob("*.safetensors*"))
    pixels = image_batches(1, 1, seed=3)[0]["pixel_values"]
    with torch.no_grad():
        output = pruned.model(pixel_values=pixels).pooler_output
    torch.save({"pixel_values": pixels, "pooler_output": output}, work / "reference_output.pt")


def stage_reload(args, work: Path, meter: Meter) -> None:
    sys.modules["amp_hf"] = None  # the checkpoint must load with transformers alone: any amp_hf import fails
    import torch
    import transformers.models.clip.modeling_clip  # noqa: F401 (what the checkpoint's modeling file imports)
    from transformers import AutoModel

    with meter.phase("reload"):
        model = AutoModel.from_pretrained(work / "pruned", trust_remote_code=True).eval()
    reference = torch.load(work / "reference_output.pt", weights_only=True)
    with torch.no_grad():
        output = model(pixel_values=reference["pixel_values"]).pooler_output
    meter.extra["max_abs_diff"] = float((output - reference["pooler_output"]).abs().max())
    meter.extra["class"] = type(model).__name__


def stage_reconstruct(args, work: Path, meter: Meter) -> None:
    from amp_hf import PrunePlan
    from amp_hf.reconstruct import ReconstructConfig, reconstruct_stack

    stack = _load_base(meter, work / "base")
    plan = PrunePlan.load(work / "plan.json")
    batches = image_batches(args.calibration_batches, args.batch_size, seed=4)
    with meter.phase("reconstruct"):
        # without the end-to-end guard: it adds one criterion pass per refit layer (cost ~ layers x params)
        config = ReconstructConfig(enabled=True, end_to_end_check=False)
        _, report = reconstruct_stack(stack, plan, batches, config, criterion=_criterion())
    meter.extra.update(summary=report.summary(), kept=report.kept,
                       layers_refit=sum(layer.status == "reconstructed" for layer in report.layers))


def stage_export(args, work: Path, meter: Meter) -> None:
    import onnx  # noqa: F401 (the libraries count as the interpreter's, not as the phase's working set)
    import onnxruntime  # noqa: F401
    import torch.onnx  # noqa: F401

    import export.exporter  # noqa: F401
    import export.validation  # noqa: F401
    from export import ExportOptions, export_checkpoint

    with meter.phase("export_validate"):
        result = export_checkpoint(work / "pruned", work / "onnx", ExportOptions(external_data=True), overwrite=True)
    graph = next(iter(result.metadata["graphs"].values()))
    files = {p.name: p.stat().st_size for p in (work / "onnx").iterdir() if p.name.endswith((".onnx", ".data"))}
    meter.extra.update(files_gb={k: round(v / GB, 3) for k, v in files.items()}, external_data=graph["external_data"],
                       validation={k: v for k, v in graph["validation"].items() if not isinstance(v, (dict, list))},
                       onnxruntime_max_abs_diff={name: output["max_abs_diff"]
                                                 for name, output in graph["validation"]["outputs"].items()})


def dinov2_config(shape: str):
    from transformers import Dinov2Config

    width, layers, heads, mlp, patch = SHAPES[shape]
    # Dinov2Config takes an integer mlp_ratio: g/14's 6144 / 1408 becomes 4 (MLP 5632); the rows use its own size
    return Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                        mlp_ratio=round(mlp / width), patch_size=patch, image_size=IMAGE, use_swiglu_ffn=False)


def facebook_dinov2(state: dict) -> dict:
    """A transformers Dinov2 (plain MLP) state dict in facebookresearch DinoVisionTransformer names."""
    import torch

    out = {"cls_token": state["embeddings.cls_token"], "mask_token": state["embeddings.mask_token"],
           "pos_embed": state["embeddings.position_embeddings"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for i in layers:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            for module in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}{module}.{kind}"] = state[f"{src}{module}.{kind}"]
            out[f"{dst}attn.qkv.{kind}"] = torch.cat([state[f"{src}attention.{p}_proj.{kind}"] for p in "qkv"])
            out[f"{dst}attn.proj.{kind}"] = state[f"{src}attention.o_proj.{kind}"]
        out[dst + "ls1.gamma"] = state[src + "layer_scale1.lambda1"]
        out[dst + "ls2.gamma"] = state[src + "layer_scale2.lambda1"]
    return out


def stage_import_setup(args, work: Path, meter: Meter) -> None:
    import torch
    from transformers import Dinov2Model

    from amp_hf import PrunePlan
    from amp_hf.slicing import slice_model

    torch.manual_seed(0)
    config = dinov2_config(args.shape)
    with meter.phase("build"):
        model = Dinov2Model(config, add_pooling_layer=False).eval() if "add_pooling_layer" in \
            Dinov2Model.__init__.__code__.co_varnames else Dinov2Model(config).eval()
    width = model.encoder.layer[0].mlp.fc1.out_features
    meter.extra.update(base_params=sum(p.numel() for p in model.parameters()), mlp_width=width)
    with meter.phase("save_base"):
        model.save_pretrained(work / "dinov2_base")
    half = [list(range(0, width, 2))] * config.num_hidden_layers  # every other neuron: a hand-made plan
    plan = PrunePlan([width] * config.num_hidden_layers, half, "random")
    with meter.phase("write_official_file"):
        pruned = slice_model(model, plan)
        del model
        torch.save(facebook_dinov2(pruned.state_dict()), work / "official_model_layer.pth")


def stage_import(args, work: Path, meter: Meter) -> None:
    from amp_hf.importing import import_official

    with meter.phase("import"):
        pruned, _ = import_official(work / "official_model_layer.pth", str(work / "dinov2_base"),
                                    work / "imported", method="amp", overwrite=True)
    meter.extra["imported_params"] = sum(p.numel() for p in pruned.parameters())


STAGE_FUNCTIONS = {
    "setup": stage_setup, "score": stage_score,
    "score_bf16": lambda a, w, m: stage_score(a, w, m, "bf16"),
    "search": lambda a, w, m: _search(a, w, m, "search"),
    "search_nocache": lambda a, w, m: _search(a, w, m, "search_nocache"),
    "search_bounded": lambda a, w, m: _search(a, w, m, "search_bounded"),
    "slice": stage_slice, "reload": stage_reload, "reconstruct": stage_reconstruct, "export": stage_export,
    "import_setup": stage_import_setup, "import": stage_import,
}


def worker(args) -> None:
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(True)
    meter = Meter()
    work = Path(args.work) / args.shape
    work.mkdir(parents=True, exist_ok=True)
    interpreter = _status()["VmRSS"]
    STAGE_FUNCTIONS[args.stage](args, work, meter)
    row = {"shape": args.shape, "stage": args.stage, "phases": meter.phases, "interpreter_rss_gb": round(interpreter, 4),
           "threads": torch.get_num_threads(), **meter.extra}
    print("BENCH_ROW " + json.dumps(row))


# -- the driver ---------------------------------------------------------------------------------------------


def settings_of(args) -> dict:
    return {"batch_size": args.batch_size, "score_batches": args.score_batches, "search_batches": args.search_batches,
            "calibration_batches": args.calibration_batches, "search_steps": args.search_steps, "image": IMAGE,
            "device": "cpu"}


def tower_sizes(shape: str) -> dict:
    """Parameter counts from the shape alone (CLIPVisionModel layout), for rows of stages that do not build one."""
    width, layers, _, mlp, patch = SHAPES[shape]
    tokens = (IMAGE // patch) ** 2 + 1
    attention = 4 * (width * width + width)
    block_mlp = 2 * width * mlp + mlp + width
    block = attention + block_mlp + 4 * width
    embeddings = 3 * patch * patch * width + width + tokens * width
    return {"params": embeddings + layers * block + 4 * width, "mlp_params": layers * block_mlp, "tokens": tokens}


def working_set_gb(shape: str, phase: str, settings: dict, params: int | None = None) -> tuple[float, float, str]:
    """(fp32 weights of the phase's input model, its stated working set, what that is), in GB."""
    width, layers, heads, mlp, _ = SHAPES[shape]
    sizes = tower_sizes(shape)
    tokens, b = sizes["tokens"], settings["batch_size"]
    weights = (params or sizes["params"]) * 4 / GB
    kept = mlp // 2 ** settings["search_steps"]
    pruned = (sizes["params"] - layers * (2 * width + 1) * (mlp - kept)) * 4 / GB
    # activations autograd keeps per layer for one batch: ~ a dozen d-wide and two H-wide fp32 token tensors
    # plus the attention probabilities (our estimate of the eager kernels' saved tensors)
    backward = layers * b * tokens * (12 * width + 2 * mlp + 2 * heads * tokens) * 4 / GB
    forward = b * tokens * (6 * width + 2 * mlp + 2 * heads * tokens) * 4 / GB  # one layer's transients, no grad
    cache = layers * settings["search_batches"] * b * tokens * width * 4 / GB
    # the search installs sliced copies of the MLPs it has searched and keeps the originals to put back
    sliced_mlps = layers * (2 * width + 1) * kept * 4 / GB
    gram = (mlp + 1) ** 2 * 8 / GB
    calibration = settings["calibration_batches"] * b * tokens * width * 4 / GB
    table = {
        "load": (0.0, weights, "the model itself (counted once, not at 1.5x)"),
        "score": (weights, backward, "activations autograd keeps for one batch"),
        "score_bf16": (weights, backward, "activations autograd keeps for one batch (fp32 estimate)"),
        "search": (weights, cache + sliced_mlps + forward,
                   "layer-input cache of every batch + the sliced MLP copies + one layer's transients"),
        "search_nocache": (weights, sliced_mlps + forward, "the sliced MLP copies + one layer's transients"),
        "search_bounded": (weights, cache / 3 + sliced_mlps + forward,
                           "bounded cache (1/3) + the sliced MLP copies + one layer's transients"),
        "slice": (weights, pruned, "the pruned model it builds"),
        "save": (weights + pruned, 0.0, "nothing beyond both models"),
        "reload": (0.0, pruned, "the pruned model"),
        "reconstruct": (weights, pruned + 6 * gram + 2 * calibration + forward,
                        "pruned model + fit/held-out Grams and solve copies of ONE layer + two layers' inputs"),
        "export_validate": (pruned, 2 * pruned + forward,
                            "the ONNX graph in memory + the onnxruntime session's weights"),
        "import": (weights, 2 * pruned, "the official file + the imported model"),
    }
    return table.get(phase, (weights, 0.0, ""))


def fit_exponent(xs, ys) -> float | None:
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    var = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / var if var else None


def load_results(path: Path, settings: dict) -> dict:
    if path.is_file():
        results = json.loads(path.read_text())
        if results.get("settings") != settings:
            raise SystemExit(f"{path} was measured with other settings {results.get('settings')}: pass the same "
                             "options, or --out another report")
        return results
    return {"settings": settings, "rows": []}


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def run_stage(args, shape: str, stage: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--shape", shape, "--stage", stage,
               "--work", args.work, *settings_arguments(args)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    started = time.time()
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in process.stdout.splitlines() if line.startswith("BENCH_ROW ")]
    if process.returncode or not lines:
        tail = "\n".join(process.stderr.splitlines()[-15:])
        return {"shape": shape, "stage": stage, "error": f"exit {process.returncode}: {tail}",
                "wall_s": round(time.time() - started, 1)}
    row = json.loads(lines[-1][len("BENCH_ROW "):])
    row["wall_s"] = round(time.time() - started, 1)
    return row


def settings_arguments(args) -> list[str]:
    return ["--batch-size", str(args.batch_size), "--score-batches", str(args.score_batches),
            "--search-batches", str(args.search_batches), "--calibration-batches", str(args.calibration_batches),
            "--search-steps", str(args.search_steps)]


def measured_phases(results: dict) -> list[dict]:
    """Flat rows (shape, stage, phase, params, time, peak, goal) of every successful measured stage."""
    flat = []
    dinov2 = {r["shape"]: r["base_params"] for r in results["rows"] if r["stage"] == "import_setup" and "error" not in r}
    for row in results["rows"]:
        if "error" in row or row["stage"] in UNMEASURED:
            continue
        params = dinov2.get(row["shape"]) if row["stage"] == "import" else tower_sizes(row["shape"])["params"]
        runtime = row["phases"][0]["start_rss_gb"]  # the interpreter with its libraries, before any model
        for phase in row["phases"]:
            if phase["phase"] == "load" and row["stage"] != "score":
                continue  # every stage loads the base the same way: one row of it is enough
            weights, working, what = working_set_gb(row["shape"], phase["phase"], results["settings"],
                                                    params if row["stage"] == "import" else None)
            allowed = 1.5 * weights + working + runtime
            flat.append({"shape": row["shape"], "stage": row["stage"], "phase": phase["phase"],
                         "params": params, "time_s": phase["time_s"], "cpu_s": phase.get("cpu_s"),
                         "evaluations": row.get("evaluations") if phase["phase"] == row["stage"] else None,
                         "peak_rss_gb": phase["peak_rss_gb"],
                         "start_rss_gb": phase["start_rss_gb"], "cuda_peak_gb": phase.get("cuda_peak_gb"),
                         "allowed_gb": round(allowed, 3), "working_set_gb": round(working, 3),
                         "working_set": what, "within_goal": phase["peak_rss_gb"] <= allowed})
    return flat


def report(results: dict, out: Path) -> None:
    flat = measured_phases(results)
    order = [s for s in SHAPES if any(r["shape"] == s for r in flat)]
    phases = list(dict.fromkeys(r["phase"] for r in flat))
    fits = {}
    for phase in phases:
        rows = sorted((r for r in flat if r["phase"] == phase), key=lambda r: r["params"])
        fits[phase] = {"shapes": [r["shape"] for r in rows],
                       "time_exponent": fit_exponent([r["params"] for r in rows], [r["time_s"] for r in rows]),
                       "cpu_time_exponent": fit_exponent([r["params"] for r in rows], [r["cpu_s"] or 0 for r in rows]),
                       "peak_rss_exponent": fit_exponent([r["params"] for r in rows], [r["peak_rss_gb"] for r in rows])}
    for phase in [p for p in phases if p.startswith("search")]:
        # AMP's search evaluates every layer: evaluations grow with depth, each costs up to a full pass
        rows = sorted((r for r in flat if r["phase"] == phase and r["evaluations"]), key=lambda r: r["params"])
        xs = [r["params"] for r in rows]
        fits[f"{phase} per evaluation"] = {
            "shapes": [r["shape"] for r in rows],
            "time_exponent": fit_exponent(xs, [r["time_s"] / r["evaluations"] for r in rows]),
            "cpu_time_exponent": fit_exponent(xs, [(r["cpu_s"] or 0) / r["evaluations"] for r in rows]),
            "peak_rss_exponent": None}
    results["phases"] = flat
    results["fits"] = fits
    results["goals"] = {
        "every_phase_within_memory_goal": all(r["within_goal"] for r in flat) if flat else None,
        # the papers' size is what the goal is for; a small tower's misses are listed with their size
        "largest_shape_within_memory_goal": all(r["within_goal"] for r in flat if r["shape"] == order[-1]) if flat else None,
        "memory_goal_misses": [f"{r['shape']} {r['phase']} +{r['peak_rss_gb'] - r['allowed_gb']:.2f} GB"
                               for r in flat if not r["within_goal"]],
        "score_time_exponent_le_1.1": _at_most(fits.get("score", {}).get("time_exponent"), 1.1),
        "score_cpu_time_exponent_le_1.1": _at_most(fits.get("score", {}).get("cpu_time_exponent"), 1.1),
        "search_time_exponent_le_1.1": _at_most(fits.get("search", {}).get("time_exponent"), 1.1),
        "search_cpu_time_exponent_le_1.1": _at_most(fits.get("search", {}).get("cpu_time_exponent"), 1.1),
    }
    lines = [
        "# Scale benchmark: stage cost against model size",
        "",
        "Written by `scripts/bench_scale.py` (random-weight CLIPVisionModel towers at OpenCLIP shapes, 224 px, CPU).",
        f"Settings: {json.dumps(results['settings'])}. Peak RSS is each phase's own (VmHWM reset at its start); "
        "*allowed* = 1.5 x fp32 weights of the phase's input model + its stated working set + the RSS of the "
        "interpreter with its libraries (the stage's RSS before it loads any model).",
        "",
        "| shape | params | stage | phase | wall (s) | CPU (s) | RSS at start (GB) | peak RSS (GB) | allowed (GB) | within |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for shape in order:
        for r in (r for r in flat if r["shape"] == shape):
            lines.append(f"| {shape} | {r['params'] / 1e6:.0f}M | {r['stage']} | {r['phase']} | {r['time_s']:.2f} | "
                         f"{r['cpu_s'] or 0:.1f} | "
                         f"{r['start_rss_gb']:.2f} | {r['peak_rss_gb']:.2f} | {r['allowed_gb']:.2f} | "
                         f"{'yes' if r['within_goal'] else '**no**'} |")
    lines += ["", "Fitted exponents k of cost ∝ params^k (log-log least squares over the shapes measured):", "",
              "| phase | shapes | wall time k | CPU time k | peak RSS k | working set counted |",
              "|---|---|---:|---:|---:|---|"]
    for phase, fit in fits.items():
        what = next((r["working_set"] for r in flat if r["phase"] == phase), "time / criterion evaluations")
        lines.append(f"| {phase} | {','.join(fit['shapes'])} | {_fmt(fit['time_exponent'])} | "
                     f"{_fmt(fit['cpu_time_exponent'])} | {_fmt(fit['peak_rss_exponent'])} | {what} |")
    lines += ["", "Local exponent between the two largest shapes measured (less diluted by the small towers' fixed "
              "costs):", ""]
    for phase in fits:
        rows = sorted((r for r in flat if r["phase"] == phase.replace(" per evaluation", "")), key=lambda r: r["params"])
        if len(rows) >= 2 and not phase.endswith("per evaluation"):
            a, b = rows[-2], rows[-1]
            ratio = math.log(b["params"] / a["params"])
            wall = math.log(b["time_s"] / a["time_s"]) / ratio
            cpu = math.log((b["cpu_s"] or 1) / (a["cpu_s"] or 1)) / ratio
            fits[phase]["two_largest"] = {"shapes": [a["shape"], b["shape"]], "wall": round(wall, 3), "cpu": round(cpu, 3)}
            lines.append(f"- {phase} ({a['shape']} → {b['shape']}): wall k {wall:.2f}, CPU k {cpu:.2f}")
    lines += ["", "Goals: " + ", ".join(f"{k}: {v}" for k, v in results["goals"].items()), ""]
    checks = []
    for row in results["rows"]:
        for key in ("same_plan_as_cached_search", "spearman_to_fp32", "max_abs_diff", "external_data", "onnxruntime_max_abs_diff",
                    "files_gb", "cached_layers", "summary"):
            if key in row:
                checks.append(f"- {row['shape']} {row['stage']}: {key} = {row[key]}")
        if "error" in row:
            checks.append(f"- {row['shape']} {row['stage']}: FAILED ({row['error'].splitlines()[-1]})")
    lines += ["Checks:", "", *checks, ""]
    write_atomic(out.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    write_atomic(out.with_suffix(".md"), "\n".join(lines))
    _plot(flat, fits, out.with_suffix(".png"))


def _at_most(value, limit):
    return None if value is None else value <= limit


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _plot(flat: list[dict], fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for phase in (p for p in fits if not p.endswith("per evaluation")):
        rows = sorted((r for r in flat if r["phase"] == phase), key=lambda r: r["params"])
        xs = [r["params"] for r in rows]
        label = f"{phase} (k={_fmt(fits[phase]['time_exponent'])})"
        left.plot(xs, [r["time_s"] for r in rows], marker="o", label=label)
        right.plot(xs, [r["peak_rss_gb"] for r in rows], marker="o",
                   label=f"{phase} (k={_fmt(fits[phase]['peak_rss_exponent'])})")
    for axis, title in ((left, "wall time (s)"), (right, "peak RSS (GB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="S16,B16,L14", help=f"comma-separated, of {','.join(SHAPES)}")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated (setup and import_setup "
                        "make inputs: keep them unless their files exist)")
    parser.add_argument("--redo", default="", help="comma-separated stages to measure again")
    parser.add_argument("--work", default="/tmp/amp_hf_bench_scale", help="scratch folder for models and exports")
    parser.add_argument("--out", default=str(REPO / "docs" / "bench_scale"), help="report path without suffix")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--score-batches", type=int, default=2)
    parser.add_argument("--search-batches", type=int, default=1)
    parser.add_argument("--calibration-batches", type=int, default=2)
    parser.add_argument("--search-steps", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per stage")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--merge", default="", help="comma-separated reports (same settings) whose rows to add, "
                        "e.g. a shape measured on its own --work / --out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    shapes = [s for s in args.shapes.split(",") if s]
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES] + [s for s in stages + args.redo.split(",") if s and s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown shape/stage {unknown}: shapes {','.join(SHAPES)}; stages {','.join(STAGES)}")
    out = Path(args.out)
    results = load_results(out.with_suffix(".json"), settings_of(args))
    redo = set(args.redo.split(","))
    for other in (Path(p) for p in args.merge.split(",") if p):
        rows = load_results(other.with_suffix(".json"), settings_of(args))["rows"]
        keys = {(r["shape"], r["stage"]) for r in rows}
        results["rows"] = [r for r in results["rows"] if (r["shape"], r["stage"]) not in keys] + rows
    if not args.report_only:
        for shape in shapes:
            for stage in (s for s in STAGES if s in stages):
                done = [r for r in results["rows"] if r["shape"] == shape and r["stage"] == stage and "error" not in r]
                if done and stage not in redo:
                    continue
                print(f"[bench_scale] {shape} {stage} ...", flush=True)
                row = run_stage(args, shape, stage)
                results["rows"] = [r for r in results["rows"] if (r["shape"], r["stage"]) != (shape, stage)] + [row]
                summary = row.get("error") or ", ".join(f"{p['phase']} {p['time_s']:.1f}s {p['peak_rss_gb']:.2f}GB"
                                                        for p in row["phases"])
                print(f"[bench_scale] {shape} {stage}: {summary}", flush=True)
                write_atomic(out.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
                if "error" in row and stage in ("setup", "score", "search", "slice", "import_setup"):
                    break  # the later stages need its files
            report(results, out)
    report(results, out)


if __name__ == "__main__":
    main()
