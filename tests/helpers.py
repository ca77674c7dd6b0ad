"""Test helpers: running Python without amp-hf importable, and `accelerate launch` on 2 CPU processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_without_amp_hf(code: str, cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that can import transformers but not amp_hf.

    ``-S`` skips site initialisation, so the editable install's path hook is not loaded; site-packages is
    added back by hand. The code fails loudly if amp_hf were importable after all. ``env``: the environment
    (default: this process's).
    """
    site_packages = sysconfig.get_paths()["purelib"]
    prelude = (
        f"import sys; sys.path.append({site_packages!r})\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('amp_hf') is None, 'amp_hf must not be importable here'\n"
    )
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def run_with_amp_hf(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's amp_hf (``cwd`` outside the repository)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def card_usage_snippets(readme: Path) -> list[str]:
    """The fenced Python blocks of a model card's "How to use" section, in order."""
    section = readme.read_text().split("\n## How to use\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


# Executes each snippet in its own namespace and saves every tensor / array it leaves behind (a ModelOutput's
# fields as "name.field") to results/<index>.pt.
_SNIPPET_RUNNER = """
import json, numpy, torch
from pathlib import Path
for index, snippet in json.loads({snippets!r}):
    namespace = {{}}
    exec(compile(snippet, f"<card snippet {{index}}>", "exec"), namespace)
    found = {{}}
    for name, value in namespace.items():
        fields = value.items() if hasattr(value, "to_tuple") else [(None, value)]  # ModelOutput: its fields
        for field, item in fields:
            if isinstance(item, numpy.ndarray):
                item = torch.from_numpy(item)
            if isinstance(item, torch.Tensor):
                found[name if field is None else f"{{name}}.{{field}}"] = item.detach()
    Path("results").mkdir(exist_ok=True)
    torch.save(found, f"results/{{index}}.pt")
"""


def run_card_snippets(readme: Path, repo_id: str, checkpoint: Path, cwd: Path, prelude: str = "") -> list[dict]:
    """Run every usage snippet of the card ``readme`` as written, with ``repo_id`` read as the local folder
    ``checkpoint``: the ones importing amp_hf in a process that has it, the others in one without amp_hf (after
    ``prelude``). ``cwd`` holds the inputs the snippets open (image.jpg). Returns, per snippet in card order,
    the tensors it left behind; a failing snippet fails the calling test with its traceback."""
    import torch

    snippets = [snippet.replace(f'"{repo_id}"', json.dumps(str(checkpoint))) for snippet in card_usage_snippets(readme)]
    assert snippets and all(str(checkpoint) in snippet for snippet in snippets), snippets
    with_amp_hf = [(i, s) for i, s in enumerate(snippets) if "import amp_hf" in s]
    without = [(i, s) for i, s in enumerate(snippets) if "import amp_hf" not in s]
    for group, run in ((with_amp_hf, run_with_amp_hf), (without, run_without_amp_hf)):
        if group:
            code = (prelude if run is run_without_amp_hf else "") + _SNIPPET_RUNNER.format(snippets=json.dumps(group))
            if run is run_without_amp_hf:
                code += "import sys\nassert 'amp_hf' not in sys.modules\n"
            result = run(code, cwd=cwd)
            assert result.returncode == 0, f"{snippets}\n{result.stderr[-4000:]}"
    return [torch.load(cwd / "results" / f"{index}.pt", weights_only=True) for index in range(len(snippets))]


def accelerate_launch(args: list[str], cwd: Path, num_processes: int = 2, timeout: int = 600,
                      extra_env: dict | None = None, mode: str = "--multi_gpu") -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N -m amp_hf ...`` on CPU (gloo); ``mode="--cpu"``: the
    launcher's CPU mode, which starts one process whatever N is."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", mode,
                "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "-m", "amp_hf"]
    return subprocess.run(launcher + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def polygraphy_check(graph: Path, batch: int = 2) -> dict:
    """NVIDIA's polygraphy on an ONNX graph, on CPU: ``inspect model`` (opset, every input / output shape) and
    ``check lint`` (ONNX checker + a real ONNX Runtime run at ``batch``), each as the CLI users run.

    Returns ``{"opset": int, "io": {name: [dims]}, "lint": report, "lint_passed": bool, "lint_log": str}``; dims
    are ints or axis names.
    """
    import json
    import re
    import tempfile

    polygraphy = str(Path(sys.executable).with_name("polygraphy"))
    inspected = subprocess.run([polygraphy, "inspect", "model", str(graph)], capture_output=True, text=True,
                               timeout=300, check=False)  # fmt: skip
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    opset = int(re.search(r"ONNX Opset: (\d+)", inspected.stdout).group(1))
    io = {}
    for name, shape in re.findall(r"\{?(\w+) \[dtype=\w+, shape=\(([^)]*)\)\]", inspected.stdout):
        io[name] = [int(d) if d.strip().isdigit() else d.strip().strip("'") for d in shape.split(",") if d.strip()]
    shapes = [f"{name}:[{','.join(str(batch if isinstance(d, str) else d) for d in dims)}]"
              for name, dims in io.items() if name in _graph_inputs(graph)]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "lint.json"
        linted = subprocess.run([polygraphy, "check", "lint", str(graph), "--input-shapes", *shapes, "-o",
                                 str(report_path)], capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return {"opset": opset, "io": io, "lint": report, "lint_passed": linted.returncode == 0,
            "lint_log": linted.stdout + linted.stderr}  # fmt: skip


def _graph_inputs(graph: Path) -> set[str]:
    import onnx

    return {value.name for value in onnx.load(str(graph), load_external_data=False).graph.input}


def prune_one_and_two_processes(main, args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """``amp-hf prune ARGS`` in this process on one thread (the summation order of the 1-thread processes of
    a 2-process run) and under ``accelerate launch`` on 2 processes; returns the two output folders."""
    import torch

    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, f"output={one}"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = accelerate_launch([*args, f"output={two}"], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return one, two


def local_paths_under(folder: Path, *extra) -> dict[str, list[str]]:
    """Every absolute path of this machine found in any file under ``folder``, read as raw bytes (a grep)."""
    from amp_hf.files.provenance import find_local_paths, local_path_markers

    markers = local_path_markers(folder, *extra)
    hits = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found = find_local_paths(path.read_bytes().decode("latin-1"), markers)
            if found:
                hits[path.relative_to(folder).as_posix()] = found
    return hits


def amp_hf_embeddings(checkpoint: Path, data):
    """amp-hf's own evaluation embeddings (``embed_dataset``) of ``data`` by the checkpoint."""
    import amp_hf
    from amp_hf.evaluation.tasks import embed_dataset

    features, _ = embed_dataset(amp_hf.load_model(str(checkpoint)), data)
    return features


def sentences_of(data, checkpoint: Path) -> list[str]:
    """The texts ``data`` selects, in the order amp-hf embeds them."""
    import amp_hf
    from amp_hf.data import load_processor, prepare_dataset

    model = amp_hf.load_model(str(checkpoint))
    adapter = amp_hf.get_adapter(model)
    return list(prepare_dataset(data, load_processor(str(checkpoint), adapter), adapter, model).dataset["text"])


def assert_sentence_transformers_matches(checkpoint: Path, data, atol: float = 1e-5, **kwargs):
    """``SentenceTransformer(checkpoint, **kwargs).encode`` equals amp-hf's embeddings and is unit-norm."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(checkpoint), device="cpu", **kwargs)
    theirs = model.encode(sentences_of(data, checkpoint), convert_to_tensor=True, batch_size=8).cpu()
    ours = amp_hf_embeddings(checkpoint, data)
    torch.testing.assert_close(theirs, ours, atol=atol, rtol=0)
    torch.testing.assert_close(theirs.norm(dim=1), torch.ones(len(ours)), atol=1e-5, rtol=0)
    return model


def assert_sentence_transformers_onnx_layout_matches(checkpoint: Path, data, atol: float = 1e-4) -> None:
    """What sentence-transformers' ONNX backend reads, checked with plain onnxruntime (no optimum): modules.json
    puts the Transformer at the folder root, its graph is ``onnx/model.onnx``, and the graph's
    ``last_hidden_state`` through the checkpoint's own later modules (Pooling, Normalize) equals amp-hf's
    embeddings."""
    import json

    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    modules = json.loads((checkpoint / "modules.json").read_text())
    transformer = next(m for m in modules if m["type"].endswith(".Transformer"))
    assert transformer["path"] == "", transformer  # the backend looks for onnx/ under the Transformer's path
    graph = checkpoint / "onnx" / "model.onnx"
    assert graph.is_file(), graph
    model = SentenceTransformer(str(checkpoint), device="cpu")  # its tokenizer and its modules after the Transformer
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    inputs = {node.name for node in session.get_inputs()}
    sentences = sentences_of(data, checkpoint)
    embeddings = []
    for start in range(0, len(sentences), 8):
        features = model.tokenize(sentences[start : start + 8])
        hidden = session.run(["last_hidden_state"], {k: v.numpy() for k, v in features.items() if k in inputs})[0]
        features = {**features, "token_embeddings": torch.from_numpy(hidden)}
        for module in list(model)[1:]:
            features = module(features)
        embeddings.append(features["sentence_embedding"])
    torch.testing.assert_close(torch.cat(embeddings), amp_hf_embeddings(checkpoint, data), atol=atol, rtol=0)


def block_outputs(model, batches) -> list[list]:
    """Per layer, per batch: the layer's output (padding tokens dropped)."""
    import torch

    import amp_hf

    stack = amp_hf.resolve(model)
    outputs: list[list] = [[] for _ in stack.layers]
    for batch in batches:
        mask = batch.get("attention_mask")
        handles = [layer.register_forward_hook(
            lambda module, args, output, index=index, mask=mask: outputs[index].append(
                (output[0] if isinstance(output, tuple) else output)[mask.bool()] if mask is not None else
                (output[0] if isinstance(output, tuple) else output)))
            for index, layer in enumerate(stack.layers)]  # fmt: skip
        with torch.no_grad():
            stack.backbone(**batch)
        for handle in handles:
            handle.remove()
    return outputs


def magnitude_plan(model, keep: float = 0.5):
    """Every layer keeps its ``keep`` share of the neurons with the largest magnitude scores."""
    import amp_hf
    from amp_hf.selection import magnitude_scores

    widths = [max(1, int(keep * w)) for w in amp_hf.get_adapter(model).widths(model)]
    return amp_hf.PrunePlan.from_scores(magnitude_scores(model), widths, "magnitude", {})


def block_errors(model, reference: list[list], batches) -> list[float]:
    """Per layer: the summed squared error of ``model``'s layer outputs on ``batches`` to ``reference``
    (``block_outputs`` of the unpruned model on the same batches)."""
    return [sum(float(((mine - theirs) ** 2).sum()) for mine, theirs in zip(layer, unpruned))
            for layer, unpruned in zip(block_outputs(model, batches), reference)]


def objective_block_errors(model, plan, batches, fresh, objectives=("mlp", "residual")):
    """Reconstruct ``plan`` once per objective (no end-to-end fallback) on ``batches``; per objective, per layer:
    the summed squared error of the layer's outputs to the unpruned model's on ``fresh`` batches. Also returns the
    last objective's model and report."""
    from amp_hf.reconstruct import ReconstructConfig, reconstruct

    unpruned = block_outputs(model, fresh)
    errors = {}
    for objective in objectives:
        pruned, report = reconstruct(model, plan, batches,
                                     ReconstructConfig(enabled=True, end_to_end_check=False, objective=objective))
        assert report.objective == objective and report.kept == "reconstructed"
        errors[objective] = block_errors(pruned, unpruned, fresh)
    return errors, pruned, report
