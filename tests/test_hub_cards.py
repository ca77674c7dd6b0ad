"""Model cards and one-commit pushes, against a loopback Hub test server (tests/hub_server.py).

Pushes run the real CLI entry point in-process, with huggingface_hub pointed at the server; the round trip
then loads the pushed repo in a subprocess that cannot import amp_hf, as a user with only transformers would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_card_snippets
from hub_server import INITIAL_FILES, HubTestServer
from huggingface_hub import ModelCard, constants
from PIL import Image
from tiny_models import build

import amp_hf
import hub_cards.push as push_module
from amp_hf import PrunePlan, compare_stats, count_parameters, model_stats, save_pruned, slice_model
from amp_hf.cli import main
from hub_cards import Backoff, gather_facts, write_card
from hub_cards.plot import KEPT_COLOR

BASE_MODEL = "google/vit-base-patch16-224"
KEPT = [range(40), range(10, 27), list(range(0, 52, 2)) + list(range(53, 64))]  # widths 40, 17, 37
WIDTHS = [40, 17, 37]
# As `amp-hf eval` writes them, for the pruned model and (in eval_report_base.json) for its base model.
EVAL_REPORT = {"schema": "amp-hf/eval-report/1", "model": "tiny-vit-amp", "results": [
    {"task": "knn", "dataset": "digits", "split": "test", "metric": "accuracy", "value": 0.912, "k": 20},
    {"task": "fidelity", "dataset": "digits", "split": "test", "metric": "mean_cosine", "value": 0.97},
]}  # fmt: skip
BASE_EVAL_REPORT = {"schema": "amp-hf/eval-report/1", "model": BASE_MODEL, "results": [
    {"task": "knn", "dataset": "digits", "split": "test", "metric": "accuracy", "value": 0.925, "k": 20},
    {"task": "knn", "dataset": "digits", "split": "test", "metric": "accuracy", "value": 0.9, "k": 10},
]}  # fmt: skip
# As `amp-hf prune` (scoring_data, base_model) and `amp-hf distill` (distillation) record provenance.
PROVENANCE = {"method": "amp", "criterion": "entropy", "delta_e": 0.05, "base_model": BASE_MODEL,
              "scoring_data": "fashion_mnist:train",
              "distillation": {"teacher": BASE_MODEL, "data": {"source": "digits", "split": "train"},
                               "steps": 300}}  # fmt: skip
REPO_ID = "tester/tiny-vit-amp"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny ViT pruned to uneven widths, saved with provenance and the reports the CLI writes beside it."""
    stock = build("vit")
    plan = PrunePlan([64, 64, 64], KEPT, method="amp", details={"criterion": "entropy", "delta_e": 0.05})
    model = slice_model(stock, plan, amp_pruning=PROVENANCE).eval()
    path = save_pruned(model, tmp_path_factory.mktemp("checkpoint") / "tiny-vit-amp", plan=plan)
    # Stats recorded as `amp-hf prune` does, so pushes need not re-measure (measuring is tested with CLIP).
    stats = compare_stats(model_stats(stock), model_stats(model))
    (path / "prune_report.json").write_text(json.dumps({"stats": stats}))
    (path / "eval_report.json").write_text(json.dumps(EVAL_REPORT))
    (path / "eval_report_base.json").write_text(json.dumps(BASE_EVAL_REPORT))
    return {"path": path, "model": model, "stock": stock}


@pytest.fixture(scope="module")
def onnx_dir(pruned, tmp_path_factory):
    """An ONNX export of the pruned model (TorchScript exporter: <1 s here, ~8 s for dynamo; the graph is
    only the payload of the upload, the export package has its own tests)."""
    folder = tmp_path_factory.mktemp("onnx_export")
    pixel_values = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            pruned["model"], (pixel_values,), str(folder / "model.onnx"), input_names=["pixel_values"],
            output_names=["last_hidden_state", "pooler_output"], dynamic_axes={"pixel_values": {0: "batch"}},
            opset_version=18, dynamo=False,
        )  # fmt: skip
    return folder


@pytest.fixture
def hub():
    with HubTestServer(max_lifetime=300) as server:
        yield server


@pytest.fixture
def hub_client(hub, monkeypatch):
    """Point this process's huggingface_hub at the test server (constants are read at import time)."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the test runner sets HF_HUB_OFFLINE=1
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setattr(push_module, "DEFAULT_BACKOFF", Backoff(attempts=3, first_wait=0.01, max_wait=0.01))
    return hub


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subprocess_env(hub_url: str, hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub_url, HF_HUB_DISABLE_XET="1", HF_TOKEN="dummy", HF_HOME=str(hf_home))
    return env


# -- card ---------------------------------------------------------------------------------------------


def test_card_holds_metadata_widths_stats_evaluations_and_onnx(pruned, onnx_dir, tmp_path, monkeypatch):
    # The base model's card sits in the local HF cache (as after a download): its license is carried over.
    cache = tmp_path / "hub_cache"
    snapshot = cache / "models--google--vit-base-patch16-224" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n# ViT\n")
    (cache / "models--google--vit-base-patch16-224" / "refs").mkdir()
    (cache / "models--google--vit-base-patch16-224" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    checkpoint = shutil.copytree(pruned["path"], tmp_path / "tiny-vit-amp")
    onnx_export = shutil.copytree(onnx_dir, tmp_path / "onnx")
    (onnx_export / "amp_export.json").write_text(json.dumps({  # as `amp-hf export` records its validation
        "options": {"target": "onnx", "dtype": "fp32", "opset": 18},
        "graphs": {"model": {"file": "model.onnx", "validation": {"outputs": {
            "last_hidden_state": {"max_abs_diff": 1.5e-06}, "pooler_output": {"max_abs_diff": 2.5e-06}}}}},
    }))  # fmt: skip

    written = write_card(checkpoint, onnx_dir=onnx_export, repo_id=REPO_ID)

    assert [p.name for p in written] == ["README.md", "width_profile.png"]
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.base_model == BASE_MODEL
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert {"amp-hf", "pruning", "vit", "onnx"} <= set(card.data.tags)
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]  # digits has no Hub id: body only
    results = {(r.task_type, r.metric_type): r for r in card.data.eval_results}
    knn = results["image-classification", "accuracy"]
    assert (knn.metric_value, knn.dataset_split) == (0.912, "test")
    assert (knn.metric_name, knn.task_name) == ("accuracy (k=20)", "kNN classification")
    assert results["feature-extraction", "mean_cosine"].metric_value == 0.97

    body = card.text
    for layer, width in enumerate(WIDTHS):
        assert f"| {layer} | 64 | {width} |" in body
    # The recorded stats are shown; they must match counting the real stock and pruned models.
    before, after = count_parameters(pruned["stock"]), count_parameters(pruned["model"])
    assert f"| Parameters (whole model) | {before:,} | {after:,} |" in body
    # The base model's report fills the "Unpruned" column of the matching row and adds no rows.
    assert "| kNN classification | digits | test | accuracy (k=20) | 0.925 | 0.912 | −0.013 |" in body
    assert len(card.data.eval_results) == 2 and "(k=10)" not in body
    assert "**Data used:** `fashion_mnist`, `digits`" in body
    assert "| `distillation.steps` |" not in body and "| `steps` | 300 |" in body  # its own table
    assert "`onnx/model.onnx`" in body and "`pixel_values` float32[batch, 3, 32, 32]" in body
    assert "Exported with target `onnx`, dtype `fp32`." in body and "| 2.5e-06 |" in body
    assert f'from_pretrained(\n    "{REPO_ID}", trust_remote_code=True' in body
    assert "arXiv:2603.08100" in body and "arXiv:2506.08591" in body
    assert "| `criterion` | entropy |" in body

    image = Image.open(checkpoint / "width_profile.png")
    assert image.format == "PNG" and image.width >= 800 and image.height >= 400
    kept_rgb = tuple(int(KEPT_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    assert sum(count for count, color in image.convert("RGB").getcolors(1 << 20) if color == kept_rgb) > 1000


def test_card_without_original_widths_reports_or_evaluations(tmp_path):
    """Minimal provenance (a plain slice, no report, no ONNX): those sections are left out, not faked."""
    stock = build("clip")
    model = slice_model(stock, PrunePlan([64, 64, 64], [range(20), range(30), range(64)]))
    checkpoint = save_pruned(model, tmp_path / "clip-pruned")
    write_card(checkpoint)
    card = ModelCard.load(checkpoint / "README.md")
    # No stats recorded: measured from config.json, matching a count over the real models.
    assert f"| Parameters (whole model) | {count_parameters(stock):,} | {count_parameters(model):,} |" in card.text
    assert card.data.pipeline_tag == "zero-shot-image-classification" and "clip" in card.data.tags
    assert "onnx" not in card.data.tags
    assert card.data.eval_results is None and card.data.base_model is None
    assert "## Evaluation" not in card.text and "## ONNX" not in card.text
    assert "No evaluation report was shipped" in card.text
    assert "<namespace>/<model-name>" in card.text  # no repo id yet: a placeholder


def test_base_model_license_read_from_a_local_base_folder(pruned, tmp_path):
    base = tmp_path / "my-local-vit"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n")
    facts = gather_facts(pruned["path"], base_model=str(base))
    assert facts.license == "mit"
    assert facts.base_model is None and facts.base_model_path == str(base)  # a path is not a Hub id


def test_the_embedded_base_models_license_comes_from_its_offline_copy(minilm_path):
    from hub_cards.facts import base_model_license

    card_license = ModelCard.load(Path(minilm_path) / "README.md").data.license
    assert card_license and base_model_license("sentence-transformers/all-MiniLM-L6-v2", None, None) == card_license


def test_card_cli_with_user_template_and_a_broken_one(pruned, tmp_path, capsys):
    checkpoint = shutil.copytree(pruned["path"], tmp_path / "ckpt")
    template = tmp_path / "card.md.jinja"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }} keeps {{ kept_neurons }} neurons: "
                        "{% for row in width_rows %}{{ row.kept }};{% endfor %}\n")  # fmt: skip
    code, out, _ = run_cli(capsys, "card", checkpoint, "--template", template, "--license", "mit")
    assert code == 0 and "README.md" in out
    text = (checkpoint / "README.md").read_text()
    assert f"keeps {sum(WIDTHS)} neurons: 40;17;37;" in text
    assert ModelCard.load(checkpoint / "README.md").data.license == "mit"

    template.write_text("{% for row in width_rows %}unclosed loop\n")
    code, _, err = run_cli(capsys, "card", checkpoint, "--template", template)
    assert code == 2 and "amp-hf card: error:" in err and str(template) in err and "failed to render" in err

    template.write_text("---\nlicense: [mit\n---\n# no closing bracket above\n")
    code, _, err = run_cli(capsys, "card", checkpoint, "--template", template)
    assert code == 2 and "rendered invalid YAML metadata" in err and "{{ card_data }}" in err


# -- what a Hub user runs next ----------------------------------------------------------------------------

SNIPPET_REPO = "tester/tiny-pruned"
CARD_TEXTS = ["a", "cat", "dog", "the", "photo", "of", "[UNK]", "[PAD]"]  # every word the snippets' texts use


def _word_tokenizer(**kwargs):
    """A real fast tokenizer over a few words (ids below the tiny text towers' vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(CARD_TEXTS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", **kwargs)


def _stock_folder(name: str, root: Path, tiny_st) -> Path:
    """A stock base model folder of family ``name`` with its processor / tokenizer files, as users' come."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    from amp_hf.data import default_image_processor

    if name == "bert":  # the sentence encoder: a real sentence-transformers folder, tokenizer included
        return tiny_st
    folder = root / f"{name}-base"
    build(name).save_pretrained(folder)
    if name == "clip":
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
        _word_tokenizer(model_input_names=["input_ids", "attention_mask"]).save_pretrained(folder)
    elif name == "siglip":  # SigLIP pads to max_length and takes no attention mask
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
        _word_tokenizer(model_input_names=["input_ids"], model_max_length=8).save_pretrained(folder)
    else:
        default_image_processor(build(name).config).save_pretrained(folder)
    return folder


def _every_second_or_third(model) -> PrunePlan:
    widths = amp_hf.get_adapter(model).widths(model)
    return PrunePlan(widths, [range(0, width, 2 + layer % 2) for layer, width in enumerate(widths)])


# The tensors each family's snippets must leave (snippet order: [sentence-transformers,] amp_hf, transformers).
SNIPPET_OUTPUTS = {
    "bert": {"embeddings", "similarities", "outputs.last_hidden_state", "outputs.pooler_output"},
    "clip": {"image_embeds", "text_embeds"},
    "siglip": {"image_embeds", "text_embeds"},
    "vit": {"outputs.last_hidden_state", "outputs.pooler_output"},
    "dinov2": {"outputs.last_hidden_state", "outputs.pooler_output"},
}


@pytest.mark.parametrize("name", sorted(SNIPPET_OUTPUTS))
def test_every_card_snippet_runs_as_written(name, tiny_st, tmp_path):
    """Per family: a base folder with its processor files, loaded, sliced and saved with no processor passed
    (save_pruned carries the base's files); every snippet of its card then runs as a Hub user would run it —
    the transformers one in a process without amp_hf — on a real image file, with the same results both ways."""
    base = _stock_folder(name, tmp_path, tiny_st)
    model = amp_hf.load_model(str(base))
    checkpoint = save_pruned(slice_model(model, _every_second_or_third(model)), tmp_path / "pruned")
    write_card(checkpoint, repo_id=SNIPPET_REPO)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "image.jpg")

    results = run_card_snippets(checkpoint / "README.md", SNIPPET_REPO, checkpoint, tmp_path)

    *_, with_amp_hf, without_amp_hf = results
    assert set().union(*results) == SNIPPET_OUTPUTS[name]
    assert with_amp_hf.keys() == without_amp_hf.keys()
    for key, value in with_amp_hf.items():  # the repository's own code computes what amp_hf's classes do
        torch.testing.assert_close(without_amp_hf[key], value, atol=1e-5, rtol=1e-5, msg=key)
    if "image_embeds" in with_amp_hf:  # one image and two texts, embedded into one space
        assert with_amp_hf["image_embeds"].shape[0] == 1 and with_amp_hf["text_embeds"].shape[0] == 2
        assert with_amp_hf["image_embeds"].shape[1] == with_amp_hf["text_embeds"].shape[1]
    if name == "bert":
        assert results[0]["embeddings"].shape == (2, 16)  # the base's Dense head: carried with the checkpoint


# -- push: the round trip -------------------------------------------------------------------------------

LOAD_WITHOUT_AMP_HF = """
import importlib.util, json, sys
sys.path.extend({site_packages!r})  # plain paths: .pth files (the editable amp_hf finder) are not processed
assert importlib.util.find_spec("amp_hf") is None, "amp_hf must not be importable here"
import numpy as np, onnxruntime, torch
from huggingface_hub import ModelCard, snapshot_download
from transformers import AutoModel

pixel_values = np.load({inputs!r})
model = AutoModel.from_pretrained({repo!r}, trust_remote_code=True).eval()
with torch.no_grad():
    np.save({torch_out!r}, model(pixel_values=torch.from_numpy(pixel_values)).last_hidden_state.numpy())
folder = snapshot_download({repo!r}, allow_patterns=["onnx/*"])
session = onnxruntime.InferenceSession(folder + "/onnx/model.onnx", providers=["CPUExecutionProvider"])
np.save({onnx_out!r}, session.run(["last_hidden_state"], {{"pixel_values": pixel_values}})[0])
card = ModelCard.load({repo!r})
result = {{"module": type(model).__module__, "metadata": card.data.to_dict(), "text": card.text}}
json.dump(result, open({card_out!r}, "w"))
"""


def test_push_then_load_with_only_transformers(pruned, onnx_dir, hub_client, tmp_path, capsys):
    code, _, err = run_cli(capsys, "push", pruned["path"], REPO_ID, "--onnx", onnx_dir)
    assert code == 0, err
    repo = hub_client.repo(REPO_ID)
    assert len(repo.commits) == 2  # the repo's initial commit + exactly one push commit
    local_files = {p.name for p in pruned["path"].iterdir() if not p.name.startswith(".")}  # hidden: not pushed
    assert set(repo.files()) == local_files | {"README.md", "width_profile.png", "onnx/model.onnx"} | set(INITIAL_FILES)
    assert repo.files()["model.safetensors"] == (pruned["path"] / "model.safetensors").read_bytes()

    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    np.save(tmp_path / "inputs.npy", pixel_values.numpy())
    outputs = {name: tmp_path / f"{name}.npy" for name in ("torch_out", "onnx_out")}
    script = LOAD_WITHOUT_AMP_HF.format(
        site_packages=sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}),
        inputs=str(tmp_path / "inputs.npy"), repo=REPO_ID, card_out=str(tmp_path / "card.json"),
        **{k: str(v) for k, v in outputs.items()},
    )  # fmt: skip
    env = subprocess_env(hub_client.url, tmp_path / "hf_home")
    load = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert load.returncode == 0, load.stderr

    with torch.no_grad():
        expected = pruned["model"](pixel_values=pixel_values).last_hidden_state.numpy()
    np.testing.assert_allclose(np.load(outputs["torch_out"]), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.load(outputs["onnx_out"]), expected, atol=1e-4, rtol=1e-4)
    result = json.loads((tmp_path / "card.json").read_text())
    assert result["module"].startswith("transformers_modules.")  # the repo's own modeling code ran
    metadata = result["metadata"]
    assert metadata["base_model"] == BASE_MODEL and metadata["library_name"] == "transformers"
    assert {"amp-hf", "pruning", "vit", "onnx"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["name"] == "tiny-vit-amp"
    assert f'"{REPO_ID}", trust_remote_code=True' in result["text"]


# -- push: failures leave the remote as it was -------------------------------------------------------------


def test_failing_commit_is_retried_then_reported_and_the_repo_is_unchanged(pruned, hub_client, capsys, caplog):
    hub_client.state.fail_commits = 100
    code, _, err = run_cli(capsys, "push", pruned["path"], REPO_ID)
    assert code == 2
    assert "amp-hf push: error: the Hub answered 500" in err and "Try again later" in err
    assert f"This run created {REPO_ID}" in err
    assert hub_client.state.commit_requests == push_module.DEFAULT_BACKOFF.attempts
    assert "retrying" in caplog.text
    repo = hub_client.repo(REPO_ID)
    assert len(repo.commits) == 1 and repo.files() == INITIAL_FILES


def test_transient_commit_failure_is_retried_into_a_single_commit(pruned, hub_client, capsys):
    hub_client.state.fail_commits = 1
    code, out, err = run_cli(capsys, "push", pruned["path"], REPO_ID)
    assert code == 0, err
    assert hub_client.state.commit_requests == 2
    repo = hub_client.repo(REPO_ID)
    assert len(repo.commits) == 2 and "model.safetensors" in repo.files()
    assert f"{hub_client.url}/{REPO_ID}/commit/" in out


def test_lost_commit_answer_is_not_committed_twice(pruned, hub_client, capsys):
    """The Hub applied the commit but the answer was lost: the pinned-parent retry is refused, not duplicated."""
    hub_client.state.lose_commit_responses = 1
    code, _, err = run_cli(capsys, "push", pruned["path"], REPO_ID)
    assert code == 2 and "changed during the push" in err and f"{REPO_ID}/commits/main" in err
    assert len(hub_client.repo(REPO_ID).commits) == 2


@pytest.mark.parametrize("case", ["no token", "invalid token", "someone else's repo"])
def test_auth_failures_name_the_fix_and_change_nothing(case, pruned, hub_client, capsys, monkeypatch, tmp_path):
    repo_id, expected = REPO_ID, None
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
        expected = "no Hugging Face token found: run `hf auth login`, set HF_TOKEN, or pass --token"
    elif case == "invalid token":
        monkeypatch.setenv("HF_TOKEN", "expired")
        expected = "rejected the token (401"
    else:
        repo_id = "someone-else/their-model"
        hub_client.state.create_repo(repo_id)
        expected = "may not write to someone-else/their-model (403"
    code, _, err = run_cli(capsys, "push", pruned["path"], repo_id)
    assert code == 2 and expected in err
    if case == "no token":
        assert hub_client.state.requests == []  # refused before any request
    if case == "someone else's repo":
        assert "Push to a namespace you own" in err
        assert hub_client.repo(repo_id).files() == INITIAL_FILES
    else:
        assert hub_client.state.repos == {}


def test_unreachable_hub_is_retried_then_reported(pruned, hub_client, capsys, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    code, _, err = run_cli(capsys, "push", pruned["path"], REPO_ID)
    assert code == 2 and "could not reach the Hub at" in err and "HF_ENDPOINT" in err


def test_dry_run_lists_files_and_sends_nothing(pruned, onnx_dir, hub_client, capsys):
    code, out, _ = run_cli(capsys, "push", pruned["path"], REPO_ID, "--onnx", onnx_dir, "--dry-run")
    assert code == 0
    assert hub_client.state.requests == []
    listed = {line.split()[2] for line in out.splitlines()[1:]}
    saved = {p.name for p in pruned["path"].iterdir() if not p.name.startswith(".")}
    assert listed == saved | {"README.md", "width_profile.png", "onnx/model.onnx"}
    size = (pruned["path"] / "model.safetensors").stat().st_size
    assert f"{size / 1024:.1f} KiB  model.safetensors" in out


def test_push_to_a_branch_and_as_a_pull_request_leaves_main_alone(pruned, hub_client, capsys):
    code, _, err = run_cli(capsys, "push", pruned["path"], REPO_ID, "--revision", "pruned-v1", "--private")
    assert code == 0, err
    repo = hub_client.repo(REPO_ID)
    assert repo.private and repo.files("main") == INITIAL_FILES and "config.json" in repo.files("pruned-v1")

    code, out, err = run_cli(capsys, "push", pruned["path"], REPO_ID, "--create-pr", "--commit-message", "Try this")
    assert code == 0, err
    assert f"{hub_client.url}/{REPO_ID}/discussions/1" in out
    assert repo.files("main") == INITIAL_FILES and "config.json" in repo.files("refs/pr/1")
    assert repo.resolve("refs/pr/1").summary == "Try this"


def _leak_into_config(checkpoint: Path, path: str) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config["amp_pruning"]["base_model"] = path
    (checkpoint / "config.json").write_text(json.dumps(config))


def _leak_into_onnx(checkpoint: Path, path: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value=f'File "{path}", line 1, in forward')
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([node], "g", [value], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    (checkpoint / "onnx").mkdir()
    onnx.save(helper.make_model(graph), str(checkpoint / "onnx" / "model.onnx"))


@pytest.mark.parametrize("leak", [_leak_into_config, _leak_into_onnx], ids=["config.json", "onnx/model.onnx"])
def test_push_refuses_files_holding_local_paths_and_sends_nothing(leak, pruned, hub_client, capsys, tmp_path):
    checkpoint = Path(shutil.copytree(pruned["path"], tmp_path / "leaky"))
    local = str(Path.cwd() / "my-base-model")
    leak(checkpoint, local)
    for argv in (("push", checkpoint, REPO_ID), ("push", checkpoint, REPO_ID, "--dry-run")):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and "Traceback" not in err
        assert f"contains an absolute path of this machine ({local}" in err and "nothing was uploaded" in err
        assert leak.__name__.endswith("config") == ("config.json" in err)
    assert hub_client.state.requests == []


@pytest.mark.parametrize("link", ["file", "folder", "onnx"])
def test_push_refuses_links_out_of_the_folder_and_sends_nothing(link, pruned, onnx_dir, hub_client, capsys, tmp_path):
    """A link out of the pushed folder (or --onnx folder) stops the push before its first request; with the link
    replaced by a copy the same push sends the copy, and links that stay inside the folder are followed."""
    (tmp_path / "secret.txt").write_text("outside the checkpoint\n")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.txt").write_text("outside too\n")
    checkpoint = Path(shutil.copytree(pruned["path"], tmp_path / "linked"))
    onnx_export = Path(shutil.copytree(onnx_dir, tmp_path / "onnx"))
    (checkpoint / "inside.json").symlink_to("config.json")  # stays inside: followed
    folder, name, target = {"file": (checkpoint, "notes.txt", "../secret.txt"),
                            "folder": (checkpoint, "extra", "../private"),
                            "onnx": (onnx_export, "notes.txt", "../secret.txt")}[link]  # fmt: skip
    (folder / name).symlink_to(target)
    extra = ["--onnx", onnx_export] if link == "onnx" else []
    for dry_run in ([], ["--dry-run"]):
        code, out, err = run_cli(capsys, "push", checkpoint, REPO_ID, *extra, *dry_run)
        assert code == 2 and "Traceback" not in err, err
        assert f"{folder / name} is a symlink to {target} ({(folder / target).resolve()}), outside {folder}" in err
        assert err.strip().endswith("nothing was sent") and "outside" not in out
    assert hub_client.state.requests == [] and hub_client.state.repos == {}

    (folder / name).unlink()  # the fix the message names: a copy in place of the link
    copy = shutil.copytree if link == "folder" else shutil.copyfile
    copy(tmp_path / Path(target).name, folder / name)
    code, _, err = run_cli(capsys, "push", checkpoint, REPO_ID, *extra)
    assert code == 0, err
    files = hub_client.repo(REPO_ID).files()
    sent = {"file": "notes.txt", "folder": "extra/key.txt", "onnx": "onnx/notes.txt"}[link]
    original = tmp_path / ("private/key.txt" if link == "folder" else "secret.txt")
    assert files[sent] == original.read_bytes()
    assert files["inside.json"] == (checkpoint / "config.json").read_bytes()


def test_a_url_is_not_a_local_path():
    from amp_hf.files.provenance import find_local_paths, local_path_markers

    markers = local_path_markers()
    assert find_local_paths("see https://example.org/tmp/x and 'relative/tmp/y'", markers) == []
    assert find_local_paths(f'{{"source": "{Path.cwd()}/out"}}', markers) == [f"{Path.cwd()}/out"]
