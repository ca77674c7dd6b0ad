"""The timm / open_clip venv works: torchvision's compiled ops load against this torch (the failure mode of a
mismatched pair is "operator torchvision::nms does not exist"), and both libraries build a tiny model."""

import pytest

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

import torch  # noqa: E402
import torchvision  # noqa: E402


def test_torchvision_ops_load_against_this_torch():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert kept.tolist() == [0, 2]


def test_timm_builds_a_tiny_vit_offline():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, patch_size=16,
                              embed_dim=16, num_heads=2, num_classes=0)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 16)
