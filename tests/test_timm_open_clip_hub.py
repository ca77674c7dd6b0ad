"""timm and open_clip models by Hub id (issue 24; vision venv): ``timm/ARCH.TAG``, ``hf-hub:timm/...`` and open_clip's
``hf-hub:laion/...`` / ``laion/...`` from a hand-built offline cache, and pruned by id over real HTTP from the
loopback Hub test server (the transformers rows are in tests/test_hub_ids.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("timm")
pytest.importorskip("open_clip")

from hub_repos import OPEN_CLIP_ID, TIMM_ID, folder_bytes, point_hub_client, write_hf_cache  # noqa: E402
from hub_server import HubTestServer  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from tiny_open_clip import build_open_clip, save_open_clip_folder  # noqa: E402
from tiny_timm import SIZE, build_timm  # noqa: E402

from amp_hf.cli import main  # noqa: E402

DIGITS = ["scoring.data.source=digits", "scoring.data.num_samples=32", "scoring.data.batch_size=16"]


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    """As timm's Hub repos are published: config.json, model.safetensors and its pytorch_model.bin twin."""
    import timm

    folder = tmp_path_factory.mktemp("timm") / "repo"
    timm.models.save_for_hf(build_timm("vit_mlp", num_classes=5), str(folder), safe_serialization="both",
                            model_args={**SIZE, "num_classes": 5})
    return folder


@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory):
    return save_open_clip_folder(build_open_clip(), tmp_path_factory.mktemp("open_clip") / "repo")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prune_by(reference, output, capsys):
    code, _, err = run(capsys, "prune", f"model={reference}", f"output={output}", *DIGITS)
    assert code == 0, err
    assert "corrupt" not in err
    return json.loads((output / "config.json").read_text())


# family -> (the Hub id, the model type a pruned checkpoint gets)
FAMILIES = {"timm": (TIMM_ID, "amp_timm_wrapper"), "open_clip": (OPEN_CLIP_ID, "amp_open_clip")}


@pytest.mark.parametrize("family, prefix", [("timm", ""), ("timm", "hf-hub:"), ("open_clip", "hf-hub:"),
                                            ("open_clip", "")])  # fmt: skip
def test_ids_from_the_offline_cache(family, prefix, timm_folder, open_clip_folder, offline_cache, tmp_path, capsys):
    repo_id, model_type = FAMILIES[family]
    folder = {"timm": timm_folder, "open_clip": open_clip_folder}[family]
    commit = write_hf_cache(offline_cache, repo_id, folder_bytes(folder))
    code, out, err = run(capsys, "stats", prefix + repo_id)
    assert code == 0, err
    config = prune_by(prefix + repo_id, tmp_path / "pruned", capsys)
    assert config["model_type"] == model_type
    provenance = config["amp_pruning"]
    assert (provenance["base_model"], provenance["base_model_revision"]) == (repo_id, commit)
    if family == "open_clip":
        assert (tmp_path / "pruned" / "open_clip_config.json").is_file()  # its preprocessing came along


@pytest.mark.parametrize("family", ["timm", "open_clip"])
def test_prune_by_id_over_http(family, timm_folder, open_clip_folder, tmp_path, capsys, monkeypatch):
    repo_id, _ = FAMILIES[family]
    folder = {"timm": timm_folder, "open_clip": open_clip_folder}[family]
    with HubTestServer(max_lifetime=300) as hub:
        point_hub_client(monkeypatch, hub.url, tmp_path / "hub")
        files = folder_bytes(folder)
        if family == "open_clip":
            files["open_clip_pytorch_model.bin"] = b"a pickle twin of the safetensors file"
        commit = hub.host_model(repo_id, files).refs["main"]
        config = prune_by(f"hf-hub:{repo_id}", tmp_path / "pruned", capsys)
        fetched = {path.rsplit("/", 1)[-1] for method, path in hub.state.requests if method == "GET" and "/resolve/" in path}
    assert config["amp_pruning"]["base_model_revision"] == commit
    assert not fetched & {"open_clip_pytorch_model.bin", "pytorch_model.bin"}  # the .safetensors was enough
