"""timm and open_clip models by Hub id (issue 24; vision venv): ``timm/ARCH.TAG``, ``hf-hub:timm/...`` and open_clip's
``hf-hub:laion/...`` / ``laion/...`` from a hand-built offline cache, and pruned by id over real HTTP from the
loopback Hub test server (the transformers rows are in tests/test_hub_ids.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("timm")
pytest.importorskip("open_clip")

from hub_repos import OPEN_CLIP_ID, TIMM_ID, folder_bytes, write_hf_cache  # noqa: E402
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


@pytest.mark.parametrize("reference", [TIMM_ID, f"hf-hub:{TIMM_ID}"])
def test_timm_ids_from_the_offline_cache(reference, timm_folder, offline_cache, tmp_path, capsys):
    commit = write_hf_cache(offline_cache, TIMM_ID, folder_bytes(timm_folder))
    code, out, err = run(capsys, "stats", reference)
    assert code == 0, err
    config = prune_by(reference, tmp_path / "pruned", capsys)
    assert config["model_type"] == "amp_timm_wrapper"
    provenance = config["amp_pruning"]
    assert (provenance["base_model"], provenance["base_model_revision"]) == (TIMM_ID, commit)


@pytest.mark.parametrize("reference", [f"hf-hub:{OPEN_CLIP_ID}", OPEN_CLIP_ID])
def test_open_clip_ids_from_the_offline_cache(reference, open_clip_folder, offline_cache, tmp_path, capsys):
    commit = write_hf_cache(offline_cache, OPEN_CLIP_ID, folder_bytes(open_clip_folder))
    code, out, err = run(capsys, "stats", reference)
    assert code == 0, err
    config = prune_by(reference, tmp_path / "pruned", capsys)
    assert config["model_type"] == "amp_open_clip"
    provenance = config["amp_pruning"]
    assert (provenance["base_model"], provenance["base_model_revision"]) == (OPEN_CLIP_ID, commit)
    assert (tmp_path / "pruned" / "open_clip_config.json").is_file()  # its preprocessing came along


@pytest.mark.parametrize("family", ["timm", "open_clip"])
def test_prune_by_id_over_http(family, timm_folder, open_clip_folder, tmp_path, capsys, monkeypatch):
    repo_id, folder = {"timm": (TIMM_ID, timm_folder), "open_clip": (OPEN_CLIP_ID, open_clip_folder)}[family]
    with HubTestServer(max_lifetime=300) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # both are read from HF_ENDPOINT at import
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        files = folder_bytes(folder)
        if family == "open_clip":
            files["open_clip_pytorch_model.bin"] = b"a pickle twin of the safetensors file"
        commit = hub.host_model(repo_id, files).refs["main"]
        config = prune_by(f"hf-hub:{repo_id}", tmp_path / "pruned", capsys)
        fetched = {path.rsplit("/", 1)[-1] for method, path in hub.state.requests if method == "GET" and "/resolve/" in path}
    assert config["amp_pruning"]["base_model_revision"] == commit
    assert not fetched & {"open_clip_pytorch_model.bin", "pytorch_model.bin"}  # the .safetensors was enough
