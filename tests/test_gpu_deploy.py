"""GPU deployment on a CPU machine: requested GPU providers fail loudly, the SkipLayerNorm setting survives ONNX
Runtime's fallback, TensorRT caches are never pushed, and scripts/bench_gpu.py's CPU-side logic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import runtime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import bench_gpu  # noqa: E402


def _skip_norm_graph(path: Path) -> Path:
    """Add + LayerNormalization: what ONNX Runtime's SkipLayerNormFusion fuses."""
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 4, 8]) for name in ("x", "r", "y")]
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]  # fmt: skip
    weights = [numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    model = helper.make_model(helper.make_graph(nodes, "g", values[:2], values[2:], weights),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    onnx.save(model, str(path))
    return path


def _optimized_ops(options: ort.SessionOptions, path: Path, tmp_path: Path, **kwargs) -> tuple[list, list]:
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, **kwargs)
    return session.get_providers(), [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_cpu_sessions_skip_layer_norm_fusion_through_session_options(tmp_path):
    path = _skip_norm_graph(tmp_path / "m.onnx")
    _, default_ops = _optimized_ops(runtime.session_options(), path, tmp_path, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in default_ops  # the fusion happens unless disabled
    options = runtime.session_options(providers=["CPUExecutionProvider"])
    _, ops = _optimized_ops(options, path, tmp_path, providers=["CPUExecutionProvider"])
    assert ops == ["Add", "LayerNormalization"]


def test_skip_layer_norm_setting_survives_onnxruntime_fallback(tmp_path, capsys, monkeypatch):
    """ONNX Runtime re-creates a session whose providers failed to initialise on ['CPUExecutionProvider'] without
    ``disabled_optimizers=``; the SessionOptions entry amp-hf uses is kept. The CPU wheel has no provider that
    fails to initialise, so the first initialisation raises the RuntimeError a failing one would; ONNX Runtime's
    own fallback code does the rest."""
    original = ort.InferenceSession._create_inference_session
    calls = []

    def fail_once(self, providers, provider_options, disabled_optimizers=None):
        calls.append(disabled_optimizers)
        if len(calls) == 1:
            self._fallback_providers = ["CPUExecutionProvider"]
            raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version")
        return original(self, providers, provider_options, disabled_optimizers)

    monkeypatch.setattr(ort.InferenceSession, "_create_inference_session", fail_once)
    path = _skip_norm_graph(tmp_path / "m.onnx")
    providers, ops = _optimized_ops(runtime.session_options(), path, tmp_path, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["SkipLayerNormFusion"])  # fmt: skip
    assert "Falling back" in capsys.readouterr().out and calls == [["SkipLayerNormFusion"], None]
    assert providers == ["CPUExecutionProvider"] and "SkipLayerNormalization" in ops  # the keyword was dropped
    calls.clear()
    options = runtime.session_options(providers=["CPUExecutionProvider"])
    providers, ops = _optimized_ops(options, path, tmp_path, providers=["CPUExecutionProvider"])
    assert "Falling back" in capsys.readouterr().out and len(calls) == 2
    assert providers == ["CPUExecutionProvider"] and ops == ["Add", "LayerNormalization"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="needs the CPU wheel")
@pytest.mark.parametrize("choice", ["cuda", "tensorrt"])
def test_gpu_provider_on_the_cpu_wheel_is_an_error_not_a_silent_fallback(tmp_path, choice):
    path = _skip_norm_graph(tmp_path / "m.onnx")
    with pytest.warns(UserWarning, match="not in available provider names"):  # ORT alone: a warning, runs on CPU
        assert ort.InferenceSession(str(path), providers=list(runtime.PROVIDER_CHOICES[choice])).get_providers() == [
            "CPUExecutionProvider"]
    with pytest.raises(runtime.ProviderError, match="not in this onnxruntime build.*amp-hf\\[gpu\\]"):
        runtime.create_session(path, choice)
    assert runtime.create_session(path, "auto").get_providers() == ["CPUExecutionProvider"]


def test_a_provider_that_did_not_load_is_named_with_its_missing_library(tmp_path):
    path = _skip_norm_graph(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # as after a failed CUDA load
    with pytest.raises(runtime.ProviderError, match="CUDAExecutionProvider did not load for m.onnx .*running on "
                                                    "CPUExecutionProvider"):  # fmt: skip
        runtime.check_providers(session, ["CUDAExecutionProvider", "CPUExecutionProvider"], path)
    runtime.check_providers(session, ["CPUExecutionProvider"], path)  # what was asked runs: no error
    present = {"libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"}
    reason = runtime.missing_library("CUDAExecutionProvider", loadable=present.__contains__)
    assert reason.startswith("cuDNN 9 (libcudnn.so.9) cannot be loaded")
    reason = runtime.missing_library("TensorrtExecutionProvider", loadable=(present | {"libcudnn.so.9"}).__contains__)
    assert reason.startswith("TensorRT 10 (libnvinfer.so.10)") and "NVIDIA's index" in reason
    assert "driver" in runtime.missing_library("CUDAExecutionProvider", loadable=lambda name: False)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="needs the CPU wheel")
def test_bench_deploy_refuses_cuda_on_the_cpu_wheel_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_deploy.py"), "--quick", "--providers",
                             "cuda", "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDAExecutionProvider not in this onnxruntime build" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_caches_are_never_pushed(tmp_path):
    from hub_cards.push import _folder_files

    for name in ("model.onnx", "trt_engine_cache/a.engine", "trt_timing_cache/t.cache", "sub/trt_engine_cache/b"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [path for path, _ in _folder_files(tmp_path)] == ["model.onnx"]


# -- scripts/bench_gpu.py -------------------------------------------------------------------------------------------


def test_nvidia_smi_output_is_parsed():
    text = "NVIDIA H200, 580.65.06, 143771, 143000\nNVIDIA H200, 580.65.06, [N/A], 12.0\n\n"
    assert bench_gpu.parse_nvidia_smi(text) == [
        {"name": "NVIDIA H200", "driver": "580.65.06", "memory_total_mib": 143771, "memory_free_mib": 143000},
        {"name": "NVIDIA H200", "driver": "580.65.06", "memory_total_mib": None, "memory_free_mib": 12},
    ]
    assert bench_gpu.parse_nvidia_smi("No devices were found\n") == []
    assert bench_gpu.query_gpus(run=lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("nvidia-smi"))) == []


def test_rows_are_labelled_by_the_session_and_cpu_rows_refuse_a_gpu_report(tmp_path):
    path = _skip_norm_graph(tmp_path / "m.onnx")
    session = runtime.create_session(path, "auto")  # on this machine: the CPU
    row = bench_gpu.label_row({"model": "pruned", "runtime": "ort-cuda-fp16", "batch": 8, "median_ms": 1.0,
                               "p25_ms": 1.0, "p75_ms": 1.0}, session.get_providers())  # fmt: skip
    assert row["provider"] == "CPUExecutionProvider" and row["on_gpu"] is False
    out = tmp_path / "report"
    report = {"command": "x", "wall_seconds": 1.0, "inventory_lines": [], "rows": [row]}
    with pytest.raises(bench_gpu.ReportError, match="refusing to write a GPU report from CPU sessions"):
        bench_gpu.write_report(report, out)
    with pytest.raises(bench_gpu.ReportError, match="no latency row"):
        bench_gpu.write_report({**report, "rows": []}, out)
    assert list(tmp_path.glob("report*")) == []
    gpu_rows = [bench_gpu.label_row({**row, "model": model, "median_ms": ms}, ["CUDAExecutionProvider"])
                for model, ms in (("unpruned", 3.0), ("pruned", 2.0))]  # fmt: skip
    bench_gpu.write_report({**report, "rows": bench_gpu.add_speedups(gpu_rows)}, out)
    assert "| pruned | ort-cuda-fp16 | CUDAExecutionProvider | 8 | 2.00 |" in out.with_suffix(".md").read_text()
    assert gpu_rows[1]["speedup"] == pytest.approx(1.5)


def test_fsdp_engaged_reads_the_recipe():
    assert bench_gpu.fsdp_engaged({"distributed_type": "FSDP", "student_wrapper": "FSDPFeatureModel"})
    assert bench_gpu.fsdp_engaged({"distributed_type": "FSDP", "student_wrapper": "FullyShardedDataParallel"})
    assert not bench_gpu.fsdp_engaged({"distributed_type": "FSDP", "student_wrapper": "FeatureModel"})
    assert not bench_gpu.fsdp_engaged({"distributed_type": "MULTI_GPU", "student_wrapper": "DistributedDataParallel"})
    assert "fsdp_version: 2" in bench_gpu.accelerate_config("fsdp")
    assert "MULTI_GPU" in bench_gpu.accelerate_config("ddp")


def test_bench_gpu_without_a_gpu_exits_1_with_one_line(tmp_path):
    script = REPO / "scripts" / "bench_gpu.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "no CUDA GPU" in result.stderr and list(tmp_path.iterdir()) == []
    inventory = subprocess.run([sys.executable, str(script), "--inventory"], capture_output=True, text=True, timeout=120)
    assert inventory.returncode == 0 and "CPUExecutionProvider: loads" in inventory.stdout
