"""Models by Hub id (issue 24): a hand-built Hugging Face cache under offline mode, and real HTTP to the loopback Hub
test server (download only what a load needs, errors that say what happened, push -> download round trip in a
process without amp_hf). The timm / open_clip rows are in tests/test_timm_open_clip_hub.py (vision venv)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_without_amp_hf
from hub_repos import CLIP_ID, SENTENCE_ID, amp_hf_cli, folder_bytes, hub_env, point_hub_client, write_hf_cache
from hub_server import HubTestServer
from huggingface_hub import constants
from tiny_models import build, sample_inputs
from transformers import CLIPImageProcessor

from amp_hf.cli import main
from amp_hf.files.model_reference import files_to_download, parse_hub_reference, resolve_reference

DIGITS = ["scoring.data.source=digits", "scoring.data.num_samples=32", "scoring.data.batch_size=16"]
MAGNITUDE = ["method=magnitude", "search.allocation=uniform", "search.target_reduction=0.2"]  # data-free, fast
SENTENCES = ["the cat sat on the mat", "a dog ran fast", "the big red dog", "a cat on a mat", "the dog sat",
             "a red cat ran", "the mat is big", "a fast dog sat on the big mat"] * 4  # fmt: skip


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """A tiny CLIPModel with its image processor, as openai/clip-vit-base-patch16 is laid out."""
    folder = tmp_path_factory.mktemp("clip") / "repo"
    build("clip").save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """This process's huggingface_hub reading only ``tmp_path/hub`` (as HF_HOME=tmp_path, HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub test server, with this process's huggingface_hub pointed at it and an empty cache."""
    with HubTestServer(max_lifetime=300) as server:
        point_hub_client(monkeypatch, server.url, tmp_path / "hub")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def text_data(tmp_path: Path) -> list[str]:
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(SENTENCES) + "\n")
    return [f"scoring.data.source={source}", "scoring.data.num_samples=32", "scoring.data.batch_size=8"]


# -- parsing and file choice (no network) ---------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("openai/clip-vit-base-patch16", ("openai/clip-vit-base-patch16", None)),
    ("openai/clip-vit-base-patch16@v1.0", ("openai/clip-vit-base-patch16", "v1.0")),
    ("hf-hub:laion/CLIP-ViT-tiny-test-laion2B", ("laion/CLIP-ViT-tiny-test-laion2B", None)),
    ("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k@" + "a" * 40,
     ("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", "a" * 40)),
    ("minilm", None), ("./org/name", None), ("/abs/org", None), ("a/b/c", None), ("org/name@", None),
])  # fmt: skip
def test_hub_references_are_parsed(text, expected):
    assert parse_hub_reference(text) == expected


def test_an_existing_folder_named_like_an_id_stays_a_folder(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_hub_reference("org/name") is None
    assert resolve_reference("org/name").repo_id is None


def test_only_the_files_a_load_needs_are_chosen():
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
             "onnx/model.onnx", "onnx/config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json",
             "modules.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_config.json",
             "README.md", "sample.png", ".gitattributes", "coreml/model.mlpackage/Data/x", "openvino/model.bin",
             "sub/pytorch_model.bin"]  # fmt: skip
    assert files_to_download(files) == [
        "config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "1_Pooling/config.json", "modules.json",
        "open_clip_model.safetensors", "open_clip_config.json", "README.md", "sub/pytorch_model.bin"]


# -- a hand-built cache, offline: the table ---------------------------------------------------


def test_transformers_clip_by_id_from_the_offline_cache(clip_folder, offline_cache, tmp_path, capsys):
    commit = write_hf_cache(offline_cache, CLIP_ID, folder_bytes(clip_folder))
    code, out, err = run(capsys, "stats", CLIP_ID)
    assert code == 0, err
    assert "params_mlp" in out
    output = tmp_path / "pruned"
    code, _, err = run(capsys, "prune", f"model={CLIP_ID}", f"output={output}", *DIGITS)
    assert code == 0, err
    provenance = json.loads((output / "config.json").read_text())["amp_pruning"]
    assert provenance["base_model"] == CLIP_ID and provenance["base_model_revision"] == commit
    assert (output / "preprocessor_config.json").is_file()  # the base's image processor came along
    code, _, err = run(capsys, "card", output)
    assert code == 0, err
    card = (output / "README.md").read_text()
    assert f"base_model: {CLIP_ID}" in card and str(offline_cache) not in card


def test_a_revision_and_the_hf_hub_prefix_pick_the_cached_commit(clip_folder, offline_cache, tmp_path, capsys):
    commit = write_hf_cache(offline_cache, CLIP_ID, folder_bytes(clip_folder))
    for reference in (f"{CLIP_ID}@{commit}", f"hf-hub:{CLIP_ID}"):
        resolved = resolve_reference(reference)
        assert resolved.repo_id == CLIP_ID and resolved.commit == commit
        assert Path(resolved.path) == offline_cache / f"models--{CLIP_ID.replace('/', '--')}" / "snapshots" / commit
    output = tmp_path / "pruned"
    code, _, err = run(capsys, "prune", f"model={CLIP_ID}@{commit}", f"output={output}", *MAGNITUDE)
    assert code == 0, err
    assert json.loads((output / "config.json").read_text())["amp_pruning"]["base_model_revision"] == commit


def test_sentence_transformers_id_from_the_offline_cache(tiny_st, offline_cache, tmp_path, capsys):
    commit = write_hf_cache(offline_cache, SENTENCE_ID, folder_bytes(Path(tiny_st)))
    code, out, err = run(capsys, "stats", SENTENCE_ID)
    assert code == 0, err
    output = tmp_path / "pruned"
    code, _, err = run(capsys, "run", f"model={SENTENCE_ID}", f"output={output}", *text_data(tmp_path))
    assert code == 0, err
    assert (output / "modules.json").is_file() and (output / "tokenizer_config.json").is_file()
    provenance = json.loads((output / "config.json").read_text())["amp_pruning"]
    assert (provenance["base_model"], provenance["base_model_revision"]) == (SENTENCE_ID, commit)


def test_export_and_eval_take_an_id(clip_folder, offline_cache, tmp_path, capsys):
    write_hf_cache(offline_cache, CLIP_ID, folder_bytes(clip_folder))
    code, _, err = run(capsys, "export", CLIP_ID, tmp_path / "onnx")
    assert code == 0, err
    assert (tmp_path / "onnx" / "vision_model.onnx").is_file() and (tmp_path / "onnx" / "text_model.onnx").is_file()


@pytest.mark.parametrize("reference, message", [
    (CLIP_ID, "is not in the local Hugging Face cache"),
    (f"{CLIP_ID}@v9", "is not in the local Hugging Face cache"),
    ("hf-hub:not an id", "is not a Hub reference"),
])  # fmt: skip
def test_offline_misses_say_what_happened(reference, message, offline_cache, tmp_path, capsys):
    output = tmp_path / "pruned"
    code, _, err = run(capsys, "prune", f"model={reference}", f"output={output}", *DIGITS)
    assert code == 2 and message in err, err
    assert "corrupt" not in err and "Traceback" not in err
    assert not output.exists()


def test_hf_home_from_the_environment_in_a_fresh_process(clip_folder, tmp_path):
    commit = write_hf_cache(tmp_path / "home" / "hub", CLIP_ID, folder_bytes(clip_folder))
    output = tmp_path / "pruned"
    result = amp_hf_cli(["prune", f"model={CLIP_ID}", f"output={output}", *MAGNITUDE],
                        hub_env(tmp_path / "home", offline=True), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((output / "config.json").read_text())["amp_pruning"]["base_model_revision"] == commit


# -- real HTTP to the loopback Hub ----------------------------------------------------------------------


def host(server: HubTestServer, repo_id: str, folder: Path, **kwargs) -> str:
    """``folder`` on the server, with files no load needs beside it (they must not be downloaded)."""
    extras = {"tf_model.h5": b"not needed", "onnx/model.onnx": b"not needed", "pytorch_model.bin": b"not needed"}
    return server.host_model(repo_id, {**folder_bytes(folder), **extras}, **kwargs).refs["main"]


def image_features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object


def downloaded(server: HubTestServer) -> set[str]:
    return {path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in server.state.requests
            if method == "GET" and "/resolve/" in path}


def test_prune_by_id_downloads_once_then_works_offline(clip_folder, hub, tmp_path, capsys, monkeypatch):
    commit = host(hub, CLIP_ID, clip_folder)
    output = tmp_path / "pruned"
    code, _, err = run(capsys, "prune", f"model={CLIP_ID}", f"output={output}", *DIGITS)
    assert code == 0, err
    assert downloaded(hub) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    provenance = json.loads((output / "config.json").read_text())["amp_pruning"]
    assert (provenance["base_model"], provenance["base_model_revision"]) == (CLIP_ID, commit)
    hub.stop()  # from now on only the cache answers
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run(capsys, "stats", CLIP_ID)
    assert code == 0, err


def test_push_then_download_in_a_process_without_amp_hf(clip_folder, hub, tmp_path, capsys, monkeypatch):
    host(hub, CLIP_ID, clip_folder)
    output = tmp_path / "pruned"
    assert run(capsys, "prune", f"model={CLIP_ID}", f"output={output}", *DIGITS)[0] == 0
    monkeypatch.setenv("HF_TOKEN", "dummy")
    code, _, err = run(capsys, "push", output, "tester/clip-pruned")
    assert code == 0, err
    import amp_hf

    pruned = amp_hf.load_model(str(output))
    inputs = sample_inputs(pruned)
    with torch.no_grad():
        expected = image_features(pruned.get_image_features(pixel_values=inputs["pixel_values"]))
    torch.save(inputs["pixel_values"], tmp_path / "pixels.pt")
    code = f"""
import json, torch
from transformers import AutoModel
model = AutoModel.from_pretrained("tester/clip-pruned", trust_remote_code=True).eval()
pixels = torch.load({str(tmp_path / 'pixels.pt')!r}, weights_only=True)
with torch.no_grad():
    out = model.get_image_features(pixel_values=pixels)
features = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object
print(json.dumps({{"type": type(model).__name__, "features": features.tolist()}}))
"""
    env = hub_env(tmp_path / "fresh-home", endpoint=hub.url)
    result = run_without_amp_hf(code, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["type"] == type(pruned).__name__
    torch.testing.assert_close(torch.tensor(answer["features"]), expected, rtol=1e-5, atol=1e-5)  # same weights


@pytest.mark.parametrize("case, message", [
    ("missing", "repository nobody/missing not found"),
    ("revision", "revision 'no-such-branch' not found"),
    ("private", "no access to tester/private"),
    ("gated", "it is a gated repo"),
])  # fmt: skip
def test_hub_failures_say_what_happened(case, message, clip_folder, hub, tmp_path, capsys, monkeypatch):
    host(hub, "tester/private", clip_folder, private=True)
    host(hub, "tester/gated", clip_folder, gated=True)
    host(hub, CLIP_ID, clip_folder)
    reference = {"missing": "nobody/missing", "revision": f"{CLIP_ID}@no-such-branch", "private": "tester/private",
                 "gated": "tester/gated"}[case]
    if case == "missing":
        monkeypatch.setenv("HF_TOKEN", "dummy")  # with a token, a missing repo is a plain 404
    output = tmp_path / "pruned"
    code, _, err = run(capsys, "prune", f"model={reference}", f"output={output}", *DIGITS)
    assert code == 2 and message in err, err
    assert "corrupt" not in err and "Traceback" not in err
    assert not output.exists()


def test_a_private_repo_loads_with_its_owners_token(clip_folder, hub, tmp_path, capsys, monkeypatch):
    host(hub, "tester/private", clip_folder, private=True)
    monkeypatch.setenv("HF_TOKEN", "dummy")
    assert run(capsys, "stats", "tester/private")[0] == 0


def test_an_unreachable_hub_is_not_called_a_corrupt_checkpoint(tmp_path, capsys, monkeypatch):
    with HubTestServer() as server:
        url = server.url
    point_hub_client(monkeypatch, url, tmp_path / "hub")  # nothing listens there any more
    code, _, err = run(capsys, "stats", "nobody/anything")
    assert code == 2 and "could not reach the Hub" in err and "HF_HUB_OFFLINE=1" in err, err


def test_snapshot_folder_copies_keep_no_links_into_the_cache(clip_folder, offline_cache, tmp_path, capsys):
    # The cache's snapshot files are links to ../../blobs: a pruned checkpoint holds real files.
    write_hf_cache(offline_cache, CLIP_ID, folder_bytes(clip_folder))
    output = tmp_path / "pruned"
    assert run(capsys, "prune", f"model={CLIP_ID}", f"output={output}", *MAGNITUDE)[0] == 0  # fmt: skip
    assert not [path for path in output.rglob("*") if path.is_symlink()]
    shutil.rmtree(offline_cache)  # the checkpoint stands alone
    assert os.listdir(output) and run(capsys, "stats", output)[0] == 0


def test_a_repo_with_transformers_and_open_clip_weights_downloads_one_copy():
    from amp_hf.families.registry import hub_files

    # laion's CLIP repos: a transformers conversion (read, as config.json is there) beside open_clip's files
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "open_clip_config.json",
             "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "tokenizer.json"]  # fmt: skip
    assert hub_files(files) == ["config.json", "model.safetensors", "open_clip_config.json", "tokenizer.json"]
    open_clip_only = [name for name in files if name.startswith("open_clip_")]
    assert hub_files(open_clip_only) == ["open_clip_config.json", "open_clip_model.safetensors"]


def test_distill_and_eval_take_the_teacher_by_id(clip_folder, offline_cache, tmp_path, capsys):
    commit = write_hf_cache(offline_cache, CLIP_ID, folder_bytes(clip_folder))
    student, distilled = tmp_path / "pruned", tmp_path / "distilled"
    assert run(capsys, "prune", f"model={CLIP_ID}", f"output={student}", *MAGNITUDE)[0] == 0
    code, _, err = run(capsys, "distill", f"teacher={CLIP_ID}", f"student={student}", f"output={distilled}",
                       "data.source=digits", "data.num_samples=16", "data.batch_size=8", "schedule.max_steps=2",
                       "schedule.warmup_steps=1")  # fmt: skip
    assert code == 0, err
    recipe = json.loads((distilled / "config.json").read_text())["amp_pruning"]
    assert recipe["base_model_revision"] == commit and recipe["distillation"]["teacher"] == CLIP_ID
    # the fidelity teacher defaults to the recorded base: the very commit, found in the cache by its id
    code, _, err = run(capsys, "eval", distilled, "--task", "fidelity", "--data", "digits")
    assert code == 0, err
    report = json.loads((distilled / "eval_report.json").read_text())
    assert any(row.get("task") == "fidelity" for row in report["results"]), report
