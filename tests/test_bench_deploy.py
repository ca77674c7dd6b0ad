"""scripts/bench_deploy.py and scripts/bench_gpu.sh: the timing plumbing interleaves and summarises honestly, the goals
are judged on the rows they concern, the GPU entry points fail with one clear line on a CPU-only machine, and
(slow) a --quick run writes every row, the report and the plot. No timing is asserted anywhere."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from export.bench import interleaved_samples

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_deploy", REPO / "scripts" / "bench_deploy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_deploy"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = load_script()


def test_runners_take_turns_and_every_run_is_counted():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    samples = interleaved_samples(runners, warmup=1, repeats=3)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3  # warm-up each, then round by round
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_summary_is_median_and_interquartile_spread():
    stats = bench.summarize([10.0, 12.0, 11.0, 30.0, 9.0])
    assert stats["median_ms"] == 11.0 and stats["runs"] == 5
    assert stats["p25_ms"] == 10.0 and stats["p75_ms"] == 12.0
    assert stats["spread"] == pytest.approx(2.0 / 11.0)  # the 30 ms outlier moves neither


def _case(batch, threads, latency):
    return {"batch": batch, "threads": threads,
            "latency": {name: bench.summarize([ms]) for name, ms in latency.items()}}  # fmt: skip


def test_rows_and_goals_compare_like_with_like():
    families = {"minilm": {"flops": {"unpruned": 100.0, "pruned": 75.0}}}
    state = {
        "cases": {
            "minilm|batch=8|threads=2": _case(8, 2, {
                "unpruned|pytorch-eager": 100.0, "unpruned|ort-fp32": 95.0, "unpruned|ort-int8-dynamic": 60.0,
                "pruned|pytorch-eager": 76.0, "pruned|ort-fp32": 80.0, "pruned|ort-int8-dynamic": 40.0,
            }),
        },
        "quality": {"minilm": {"pruned|ort-int8-dynamic": {"fidelity": 0.7, "int8_cost": 0.02}}},
    }
    rows = bench.build_rows(state, families)
    by = {(r["model"], r["runtime"]): r for r in rows}
    assert by[("pruned", "ort-fp32")]["speedup"] == pytest.approx(95 / 80)
    assert by[("pruned", "ort-fp32")]["of_ideal"] == pytest.approx((95 / 80) / (100 / 75))
    assert by[("unpruned", "ort-fp32")]["vs_eager"] == pytest.approx(100 / 95)
    assert by[("pruned", "ort-int8-dynamic")]["int8_cost"] == 0.02
    checks = bench.goals(rows, families)
    verdicts = {(c["goal"].split(" ")[0] + c["goal"].split(" ")[1], c["case"]): c["met"] for c in checks}
    assert verdicts[("prunedint8", "ort-int8-dynamic, 2 thread(s)")] is True  # 60 / 40 = 1.5 >= 1.3
    assert verdicts[("ORTfp32", "minilm unpruned batch 8, 2 thr")] is False  # 100 / 95 < 1.1
    assert verdicts[("int8costs", "minilm pruned ort-int8-dynamic")] is False  # 0.02 > 0.01
    assert verdicts[("prunedspeed-up", "minilm pruned ort-fp32 batch 8, 2 thr")] is False  # 0.89 of ideal
    assert verdicts[("prunedspeed-up", "minilm pruned pytorch-eager batch 8, 2 thr")] is True


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi") is not None, reason="has a GPU")
def test_gpu_script_stops_with_one_line_without_cuda(tmp_path):
    before = set(REPO.joinpath("docs").iterdir())
    for args in ([], ["--check"]):
        result = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh"), *args], capture_output=True,
                                text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
                                check=False)  # fmt: skip
        assert result.returncode == 1
        assert result.stdout == "" and result.stderr.count("\n") == 1
        assert result.stderr.startswith("bench_gpu.sh: no CUDA device")
    assert set(REPO.joinpath("docs").iterdir()) == before  # nothing written, nothing installed


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="has onnxruntime-gpu")
@pytest.mark.parametrize("providers", ["cuda", "tensorrt"])
def test_gpu_providers_are_refused_clearly_by_a_cpu_onnxruntime(providers, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_deploy.py"), "--providers", providers,
                             "--out", str(tmp_path / "report"), "--work", str(tmp_path / "work")],
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not in this onnxruntime build (" in lines[0] and "install onnxruntime-gpu" in lines[0]
    assert not list(tmp_path.iterdir())  # refused before any model is built


@pytest.mark.slow
def test_quick_run_writes_every_row_the_report_and_the_plot(tmp_path):
    out = tmp_path / "bench_deploy"
    command = [sys.executable, str(REPO / "scripts" / "bench_deploy.py"), "--quick", "--out", str(out), "--work",
               str(tmp_path / "work")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=3000, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["family"], r["model"], r["runtime"]) for r in report["rows"]}
    for runtime in bench.RUNTIMES:
        for model in ("unpruned", "pruned", "distilled"):
            assert ("minilm", model, runtime) in rows
        for model in ("unpruned", "pruned"):
            assert ("vit-b16", model, runtime) in rows
    assert all("fidelity" in r for r in report["rows"])
    assert all("knn20" in r for r in report["rows"] if r["family"] == "minilm")
    assert [entry["round_to"] for entry in report["round_to"]["rows"]] == list(bench.ROUND_TO)
    assert report["goals"] and report["profile"]["minilm"]["onnxruntime"]
    assert len(report["load_before"]) == 3 and len(report["load_after"]) == 3
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "## Goals" in out.with_suffix(".md").read_text()
    # the part profile found the MLP kernels (by their hidden widths) in every graph of both models
    for entry in report["parts"].values():
        assert set(entry["runtimes"]) == set(bench.GRAPH_KINDS)
        for part in entry["runtimes"].values():
            assert part["unpruned"]["mlp matmuls"] > 0 and part["pruned"]["mlp matmuls"] > 0
            assert part["unpruned"]["other matmuls"] > 0 and 0 < part["mlp_share"] < 1
    assert "## Where pruning's time goes" in out.with_suffix(".md").read_text()
    # ONNX Runtime's default session against amp-hf's, on every unpruned graph of both models
    assert {(r["family"], r["runtime"]) for r in report["skip_norm_fusion"]} == {
        (family, runtime) for family in ("minilm", "vit-b16") for runtime in ("ort-fp32", "ort-int8-dynamic", "ort-int8-static")}
    # A second run resumes: every case is already measured, nothing is re-timed.
    cases = json.loads((tmp_path / "work" / "cases-cpu.json").read_text())["cases"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=3000, check=False, cwd=REPO)
    assert again.returncode == 0
    assert json.loads((tmp_path / "work" / "cases-cpu.json").read_text())["cases"] == cases
