#!/usr/bin/env python
"""GPU deployment check and benchmark for a machine with an NVIDIA GPU and no network (scripts/bench_gpu.sh runs it).

Installs nothing and downloads nothing. In order:

1. an inventory: GPUs, driver and the CUDA version it supports (nvidia-smi, libcuda), the CUDA runtime torch was
   built with, the onnxruntime build and the execution providers that *load* (a session on each, checked with
   ``session.get_providers()``), TensorRT, free GPU memory;
2. latency of the ViT-B/16 shape (random weights, 224 px) unpruned vs 40% of its MLP neurons pruned: PyTorch CUDA
   eager fp16 / bf16, and ONNX Runtime's CUDA (fp32, fp16) and TensorRT (fp16, the export's written profile)
   execution providers where they load. Every row names the provider its session actually ran on; a GPU report
   with a row that ran on the CPU is refused, not written;
3. two short ``accelerate launch`` distillations of a pruned ViT on one GPU, one with FSDP (version 2) and one with
   DDP, recording from the distilled checkpoint's recipe how accelerate ran and whether FSDP wrapped the student.

    python scripts/bench_gpu.py [--quick] [--out docs/bench_gpu] [--work DIR] [--providers cuda,tensorrt]
    python scripts/bench_gpu.py --inventory      # only print the inventory (works without a GPU)

Without a GPU it exits 1 with one line (nothing written). Graphs and TensorRT engines are cached in --work, so a
second run skips the exports. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.free",
                    "--format=csv,noheader,nounits"]  # fmt: skip
TORCH_CUDA = "torch-cuda"  # the provider label of PyTorch rows whose model ran on a CUDA device
GPU_LABELS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", TORCH_CUDA)
ORT_KINDS = {  # --providers name -> {runtime: ExportOptions fields}
    "cuda": {"ort-cuda-fp32": {}, "ort-cuda-fp16": {"dtype": "fp16"}},
    "tensorrt": {"ort-tensorrt-fp16": {"target": "tensorrt", "dtype": "fp16"}},
}
PROVIDER_OF = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
TORCH_DTYPES = ("fp16", "bf16")


class NoGpuError(RuntimeError):
    """This machine has no usable NVIDIA GPU."""


class ReportError(RuntimeError):
    """A GPU report that would carry numbers not measured on the GPU."""


# -- inventory ------------------------------------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> list[dict]:
    """The GPUs of ``nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free --format=csv,noheader,
    nounits`` output; a value nvidia-smi cannot read (``[N/A]``, ``[Not Supported]``) becomes None."""
    gpus = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 4 or not fields[0]:
            continue
        name, driver, total, free = (None if field.startswith("[") else field for field in fields)
        gpus.append({"name": name, "driver": driver, "memory_total_mib": _int_or_none(total),
                     "memory_free_mib": _int_or_none(free)})  # fmt: skip
    return gpus


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def query_gpus(run=subprocess.run) -> list[dict]:
    """nvidia-smi's GPUs; none when nvidia-smi is missing, fails or hangs."""
    try:
        result = run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else []


def inventory() -> dict:
    """What this machine has for GPU inference and training; every probe that fails says why instead of raising."""
    import torch  # before onnxruntime: a CUDA torch has already loaded the CUDA libraries ORT's providers need

    from export.runtime import build_cuda_version, driver_cuda_version, loadable_providers, onnxruntime_distributions

    info: dict = {"host": platform.node(), "python": platform.python_version(), "gpus": query_gpus()}
    driver = driver_cuda_version()
    info["driver_cuda"] = f"{driver[0]}.{driver[1]}" if driver else None
    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": torch.cuda.get_device_name(index),
                            "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
                            "memory_free_mib": free // 2**20, "memory_total_mib": total // 2**20})  # fmt: skip
    info["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                     "devices": devices, "bf16": bool(devices) and torch.cuda.is_bf16_supported()}  # fmt: skip
    import onnxruntime as ort

    info["onnxruntime"] = {"version": ort.__version__, "distributions": onnxruntime_distributions(),
                           "build_cuda": build_cuda_version(), "in_build": ort.get_available_providers(),
                           "loads": loadable_providers()}  # fmt: skip
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError as error:
        info["tensorrt"] = None
        info["tensorrt_error"] = str(error).splitlines()[0]
    for package in ("accelerate", "transformers"):
        info[package] = _version(package)
    return info


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def has_gpu(info: dict) -> bool:
    return bool(info["gpus"]) or info["torch"]["cuda_available"]


def loading_providers(info: dict) -> list[str]:
    """The ``--providers`` names (cuda, tensorrt) whose ONNX Runtime provider loaded in the inventory."""
    loads = info["onnxruntime"]["loads"]
    return [name for name, provider in PROVIDER_OF.items() if provider in loads and loads[provider] is None]


def format_inventory(info: dict) -> list[str]:
    lines = [f"host {info['host']}, Python {info['python']}"]
    if info["gpus"]:
        for index, gpu in enumerate(info["gpus"]):
            lines.append(f"GPU {index}: {gpu['name']}, driver {gpu['driver']}, {gpu['memory_free_mib']} of "
                         f"{gpu['memory_total_mib']} MiB free")  # fmt: skip
    else:
        lines.append("GPU: nvidia-smi lists none")
    lines.append(f"driver supports CUDA {info['driver_cuda'] or '- (no libcuda.so.1)'}")
    torch_info = info["torch"]
    lines.append(f"torch {torch_info['version']}, built for CUDA {torch_info['cuda'] or '- (CPU build)'}, "
                 f"cuda available: {torch_info['cuda_available']}, bf16: {torch_info['bf16']}")  # fmt: skip
    ort_info = info["onnxruntime"]
    lines.append(f"onnxruntime {ort_info['version']} ({' + '.join(ort_info['distributions']) or '?'}, "
                 f"CUDA {ort_info['build_cuda'] or '- (CPU build)'}); in the build: {', '.join(ort_info['in_build'])}")
    for provider, error in ort_info["loads"].items():
        lines.append(f"  {provider}: {'loads' if error is None else 'does not load: ' + error}")
    lines.append(f"tensorrt {info['tensorrt'] or '- (' + info.get('tensorrt_error', 'not installed') + ')'}")
    lines.append(f"accelerate {info['accelerate']}, transformers {info['transformers']}")
    return lines


# -- rows -------------------------------------------------------------------------------------------------------------


def label_row(row: dict, active: list[str] | str) -> dict:
    """``row`` with the provider its session actually ran on: the first of ``session.get_providers()`` for ONNX
    Runtime, ``torch-cuda`` / ``torch-cpu`` for PyTorch."""
    provider = active[0] if isinstance(active, list) else active
    return {**row, "provider": provider, "on_gpu": provider in GPU_LABELS}


def torch_label(model) -> str:
    return f"torch-{next(model.parameters()).device.type}"


def check_gpu_rows(rows: list[dict]) -> None:
    """Refuse a GPU report with no rows, an unlabelled row, or a row measured on the CPU."""
    if not rows:
        raise ReportError("no latency row was measured: nothing to report")
    unlabelled = [row["runtime"] for row in rows if not row.get("provider")]
    if unlabelled:
        raise ReportError(f"rows without the provider they ran on: {', '.join(unlabelled)}")
    on_cpu = sorted({f"{row['runtime']} ran on {row['provider']}" for row in rows if row["provider"] not in GPU_LABELS})
    if on_cpu:
        raise ReportError(f"refusing to write a GPU report from CPU sessions ({'; '.join(on_cpu)}): run it where the "
                          "GPU providers load (the inventory says why they do not)")  # fmt: skip


def add_speedups(rows: list[dict]) -> list[dict]:
    """``speedup`` = unpruned / pruned latency of the same runtime, batch and provider, on the pruned rows."""
    unpruned = {(r["runtime"], r["batch"], r["provider"]): r["median_ms"] for r in rows if r["model"] == "unpruned"}
    for row in rows:
        base = unpruned.get((row["runtime"], row["batch"], row["provider"]))
        row["speedup"] = base / row["median_ms"] if row["model"] == "pruned" and base else None
    return rows


def fsdp_engaged(recipe: dict) -> bool:
    """Whether a distillation ran with its student wrapped by FSDP (from its checkpoint's distillation recipe)."""
    wrapper = recipe.get("student_wrapper") or ""
    return recipe.get("distributed_type") == "FSDP" and (
        wrapper == "FullyShardedDataParallel" or wrapper.startswith("FSDP")
    )


def write_report(report: dict, out: Path) -> None:
    """OUT.json and OUT.md, each written whole (temp file, then rename), only for rows that all ran on the GPU."""
    check_gpu_rows(report["rows"])
    report = {**report, "markdown": markdown(report)}
    for suffix, text in ((".json", json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2)),
                         (".md", report["markdown"])):  # fmt: skip
        target = out.with_suffix(suffix)
        temporary = target.with_name(f".{target.name}.partial")
        temporary.write_text(text)
        temporary.replace(target)


def markdown(report: dict) -> str:
    lines = ["# GPU deployment: pruned vs unpruned ViT-B/16 shape", "",
             f"`{report['command']}` — {report['wall_seconds']:.0f} s. Inventory:", "", "```",
             *report["inventory_lines"], "```", "",
             "Every row's provider is what its session ran on (`session.get_providers()[0]` for ONNX Runtime; the "
             "model's device for PyTorch). ORT rows use IOBinding and include the input copy to the GPU and the "
             "output copy back; speed-up = unpruned / pruned on the same runtime, batch and provider.", "",
             "| model | runtime | provider | batch | ms | p25–p75 | speed-up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in report["rows"]:
        speedup = f"{row['speedup']:.2f}x" if row.get("speedup") else ""
        lines.append(f"| {row['model']} | {row['runtime']} | {row['provider']} | {row['batch']} | "
                     f"{row['median_ms']:.2f} | {row['p25_ms']:.2f}–{row['p75_ms']:.2f} | {speedup} |")  # fmt: skip
    if report.get("skipped"):
        lines += ["", "Not measured:", *[f"- {item}" for item in report["skipped"]]]
    if report.get("distill"):
        lines += ["", "## accelerate launch distillation (1 GPU process)", "",
                  "| mode | exit | seconds | distributed type | student wrapper | FSDP engaged | last loss |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for run in report["distill"]:
            loss = f"{run['last_loss']:.4g}" if run.get("last_loss") is not None else ""
            lines.append(f"| {run['mode']} | {run['returncode']} | {run['seconds']:.0f} | "
                         f"{run.get('distributed_type') or ''} | {run.get('student_wrapper') or ''} | "
                         f"{run['fsdp_engaged']} | {loss} |")  # fmt: skip
    return "\n".join(lines) + "\n"


# -- measuring --------------------------------------------------------------------------------------------------------


def settings(quick: bool) -> dict:
    """Sizes that keep a run within 10 minutes on one GPU (quick: 4), exports included."""
    if quick:
        return {"num_layers": 12, "batches": [8], "warmup": 5, "repeats": 20, "distill_steps": 8, "distill_layers": 4}
    return {"num_layers": 12, "batches": [1, 8, 32], "warmup": 10, "repeats": 50, "distill_steps": 30,
            "distill_layers": 12}  # fmt: skip


def summarize(samples: list[float]) -> dict:
    ordered = sorted(samples)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) >= 4 else (ordered[0], 0,
                                                                                                   ordered[-1])
    return {"median_ms": statistics.median(ordered), "p25_ms": q1, "p75_ms": q3, "runs": len(ordered)}


def vit_models(num_layers: int) -> dict:
    from export.bench import BenchConfig, build_models

    models = build_models(BenchConfig(num_layers=num_layers, prune_fraction=0.4))
    return {"unpruned": models["unpruned"], "pruned": models["pruned"]}


def torch_rows(models: dict, config: dict, dtypes: tuple[str, ...]) -> list[dict]:
    import torch

    from export.bench import interleaved_samples

    rows = []
    for dtype_name in dtypes:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
        for batch in config["batches"]:
            pixels = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
            runners, labels = {}, {}
            for name, model in models.items():
                copy = _copy_to(model, "cuda", dtype)
                labels[name] = torch_label(copy)

                def run(copy=copy, pixels=pixels):
                    with torch.inference_mode():
                        copy(pixel_values=pixels)
                    torch.cuda.synchronize()

                runners[name] = run
            samples = interleaved_samples(runners, config["warmup"], config["repeats"])
            for name, values in samples.items():
                rows.append(label_row({"model": name, "runtime": f"pytorch-eager-{dtype_name}", "batch": batch,
                                       **summarize(values)}, labels[name]))  # fmt: skip
            del runners
            torch.cuda.empty_cache()
    return rows


def _copy_to(model, device: str, dtype):
    import copy

    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def export_graphs(models: dict, work: Path, kinds: dict) -> dict:
    """``{runtime: {model: export folder}}``, traced by ``export_model`` once and cached in ``work``."""
    from export import ExportOptions, export_model

    folders: dict = {}
    for runtime, fields in kinds.items():
        for name, model in models.items():
            folder = work / "graphs" / f"vit-b16-{model.config.num_hidden_layers}blocks-{name}-{runtime}"
            if not (folder / "amp_export.json").is_file():
                print(f"bench_gpu: exporting {name} for {runtime}", file=sys.stderr)
                export_model(model, folder, ExportOptions(**fields), overwrite=True)
            folders.setdefault(runtime, {})[name] = folder
    return folders


def ort_rows(folders: dict, config: dict, choices: dict[str, str]) -> list[dict]:
    """``choices``: runtime -> the provider asked for (``cuda`` / ``tensorrt``, checked; ``auto``: recorded)."""
    import numpy as np

    from export.bench import interleaved_samples
    from export.runtime import ExportRunner

    rows = []
    for runtime, by_model in folders.items():
        for batch in config["batches"]:
            pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            runners, labels = {}, {}
            for name, folder in by_model.items():
                runner = ExportRunner(folder, providers=choices[runtime])
                labels[name] = next(iter(runner.providers.values()))
                feed = {"pixel_values": pixels.astype(_input_dtype(runner))}
                runners[name] = lambda runner=runner, feed=feed: runner.run(**feed)
            samples = interleaved_samples(runners, config["warmup"], config["repeats"])
            for name, values in samples.items():
                rows.append(label_row({"model": name, "runtime": runtime, "batch": batch, **summarize(values)},
                                      labels[name]))  # fmt: skip
    return rows


def _input_dtype(runner) -> str:
    session = next(iter(runner.sessions.values()))
    return "float16" if session.get_inputs()[0].type == "tensor(float16)" else "float32"


def distill_runs(work: Path, config: dict, timeout: float = 240) -> list[dict]:
    """One short ``accelerate launch`` distillation per mode (FSDP 2, DDP), one GPU process each."""
    import torch
    from transformers import ViTConfig, ViTModel

    from amp_hf import PrunePlan, save_pruned, slice_model

    root = work / "distill"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    torch.manual_seed(0)
    teacher = ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=config["distill_layers"], num_attention_heads=6,
                                 intermediate_size=1536, image_size=224, patch_size=16)).eval()  # fmt: skip
    teacher.save_pretrained(root / "teacher")
    widths = [1536] * config["distill_layers"]
    generator = torch.Generator().manual_seed(0)
    plan = PrunePlan(widths, [torch.randperm(w, generator=generator)[: w * 6 // 10].tolist() for w in widths],
                     method="random")  # fmt: skip
    save_pruned(slice_model(teacher, plan), root / "student", plan=plan)
    runs = []
    for mode in ("fsdp", "ddp"):
        launch_config = root / f"accelerate-{mode}.yaml"
        launch_config.write_text(accelerate_config(mode))
        output = root / f"distilled-{mode}"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config),
                   "-m", "amp_hf", "distill", f"teacher={root / 'teacher'}", f"student={root / 'student'}",
                   f"output={output}", "overwrite=true", "data.source=digits", "data.batch_size=32",
                   f"schedule.max_steps={config['distill_steps']}", "schedule.warmup_steps=2",
                   "logging.every_steps=2", "checkpointing.every_steps=100000"]  # fmt: skip
        started = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})  # fmt: skip
            returncode, stderr = result.returncode, result.stderr
        except subprocess.TimeoutExpired as error:
            returncode, stderr = "timeout", str(error.stderr or "")
        run = {"mode": mode, "returncode": returncode, "seconds": time.perf_counter() - started}
        run.update(distill_outcome(output))
        if returncode != 0:
            run["stderr_tail"] = stderr[-2000:]
        runs.append(run)
    return runs


def accelerate_config(mode: str) -> str:
    """An accelerate config for one GPU process: FSDP 2 wrapping each ViTLayer (as configs/accelerate/fsdp.yaml),
    or DDP."""
    common = ("compute_environment: LOCAL_MACHINE\nmixed_precision: bf16\nnum_machines: 1\nnum_processes: 1\n"
              "machine_rank: 0\nrdzv_backend: static\nsame_network: true\nuse_cpu: false\ngpu_ids: '0'\n")
    if mode == "ddp":
        return "distributed_type: MULTI_GPU\n" + common
    return ("distributed_type: FSDP\n" + common + "fsdp_config:\n  fsdp_version: 2\n"
            "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  fsdp_transformer_layer_cls_to_wrap: ViTLayer\n"
            "  fsdp_reshard_after_forward: false\n  fsdp_state_dict_type: SHARDED_STATE_DICT\n"
            "  fsdp_cpu_ram_efficient_loading: false\n  fsdp_offload_params: false\n")


def distill_outcome(output: Path) -> dict:
    """From a distilled checkpoint: how accelerate ran it, whether FSDP engaged, the last logged loss."""
    config_file = output / "config.json"
    if not config_file.is_file():
        return {"distributed_type": None, "student_wrapper": None, "fsdp_engaged": False, "last_loss": None}
    recipe = json.loads(config_file.read_text()).get("amp_pruning", {}).get("distillation", {})
    last_loss = None
    try:
        from amp_hf.distill.metrics import read_metrics

        metrics = read_metrics(f"{output}.run")
        last_loss = metrics[-1]["loss/total"] if metrics else None
    except (OSError, KeyError, ValueError):
        pass
    return {"distributed_type": recipe.get("distributed_type"), "student_wrapper": recipe.get("student_wrapper"),
            "fsdp_engaged": fsdp_engaged(recipe), "last_loss": last_loss}  # fmt: skip


# -- main -------------------------------------------------------------------------------------------------------------


def parse_providers(text: str | None, loading: list[str]) -> list[str]:
    """``--providers``: the names given (each must load, else ``ProviderError``), or those that load."""
    from export.runtime import ProviderError, check_loadable

    if text is None:
        return loading
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ORT_KINDS and name != "none"]
    if unknown:
        raise ProviderError(f"--providers takes cuda, tensorrt or none, not {', '.join(unknown)}")
    for name in names:
        if name != "none":
            check_loadable(name)
    return [name for name in names if name != "none"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 only, fewer repeats, short distillations (~4 min)")
    parser.add_argument("--out", default=str(REPO / "docs" / "bench_gpu"), help="writes OUT.json and OUT.md")
    parser.add_argument("--work", default=None, help="exported graphs and engines (default: the amp-hf cache)")
    parser.add_argument("--providers", default=None,
                        help="ONNX Runtime providers to measure, comma-separated: cuda, tensorrt, none (default: "
                             "every one that loads); one that does not load is an error")  # fmt: skip
    parser.add_argument("--no-distill", action="store_true", help="skip the accelerate FSDP / DDP runs")
    parser.add_argument("--inventory", action="store_true", help="print the inventory and stop (no GPU needed)")
    args = parser.parse_args(argv)

    from export.runtime import ProviderError

    info = inventory()
    lines = format_inventory(info)
    if args.inventory:
        print("\n".join(lines))
        return 0
    if not has_gpu(info):
        print("bench_gpu: no CUDA GPU (nvidia-smi lists none and torch.cuda.is_available() is False): run it on a "
              "machine with an NVIDIA GPU", file=sys.stderr)  # fmt: skip
        return 1
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"bench_gpu: error: output folder {out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        chosen = parse_providers(args.providers, loading_providers(info))
    except ProviderError as error:
        print(f"bench_gpu: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines), file=sys.stderr)
    from amp_hf.cache import cache_root

    work = Path(args.work) if args.work else cache_root() / "bench_gpu"
    work.mkdir(parents=True, exist_ok=True)
    config = settings(args.quick)
    started = time.perf_counter()
    models = vit_models(config["num_layers"])
    rows, skipped = [], []
    if info["torch"]["cuda_available"]:
        dtypes = TORCH_DTYPES if info["torch"]["bf16"] else ("fp16",)
        rows += torch_rows(models, config, dtypes)
    else:
        skipped.append(f"PyTorch CUDA eager: torch {info['torch']['version']} sees no CUDA device")
    for name in ORT_KINDS:
        if name not in chosen:
            reason = info["onnxruntime"]["loads"].get(PROVIDER_OF[name], "not in this onnxruntime build")
            skipped.append(f"ONNX Runtime {PROVIDER_OF[name]}: {reason or 'not asked for (--providers)'}")
    kinds = {runtime: fields for name in chosen for runtime, fields in ORT_KINDS[name].items()}
    folders = export_graphs(models, work, kinds)
    choices = {runtime: name for name in chosen for runtime in ORT_KINDS[name]}
    try:
        rows += ort_rows(folders, config, choices)
    except ProviderError as error:
        print(f"bench_gpu: error: {error}", file=sys.stderr)
        return 2
    distill = [] if args.no_distill or not info["torch"]["cuda_available"] else distill_runs(work, config)
    command = " ".join(["python scripts/bench_gpu.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "quick": args.quick, "settings": config, "inventory": info,
              "inventory_lines": lines, "rows": add_speedups(rows), "skipped": skipped, "distill": distill,
              "wall_seconds": time.perf_counter() - started}  # fmt: skip
    try:
        write_report(report, out)
    except ReportError as error:
        print(f"bench_gpu: error: {error}", file=sys.stderr)
        return 1
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
