"""Training augmentations for image distillation, with PIL and numpy (torchvision is not a dependency).

``crop_flip`` is AMP's CLIP recipe: RandomResizedCrop (area scale 0.2–1, aspect 3/4–4/3, bicubic) plus a
horizontal flip. ``dino`` adds DINO-style photometric changes (colour jitter, grayscale, blur, solarise)
on a crop with minimum scale 0.05.

Randomness comes from a generator seeded by (seed, epoch, sample index), never from global state: a
sample's augmentation is the same whatever the worker, process count or resume point, which is what makes
resumed runs reproduce uninterrupted ones exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import Dataset

from ..data import ProcessedDataset
from .config import AugmentConfig

ASPECT_RATIOS = (3 / 4, 4 / 3)


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering ``scale`` of the area (torchvision's algorithm:
    ten tries at a random area and log-uniform aspect ratio, then a centre crop)."""
    area = width * height
    log_ratios = (math.log(ASPECT_RATIOS[0]), math.log(ASPECT_RATIOS[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratios))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return left, top, left + crop_w, top + crop_h
    # Fallback: the largest centre crop whose aspect ratio lies in range.
    ratio = width / height
    if ratio < ASPECT_RATIOS[0]:
        crop_w, crop_h = width, round(width / ASPECT_RATIOS[0])
    elif ratio > ASPECT_RATIOS[1]:
        crop_w, crop_h = round(height * ASPECT_RATIOS[1]), height
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    hue, saturation, value = image.convert("HSV").split()
    shifted = (np.asarray(hue, dtype=np.int16) + round(shift * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8)), saturation, value)).convert("RGB")


def dino_photometric(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """DINO's global-crop colour pipeline: jitter (p=0.8), grayscale (0.2), Gaussian blur (0.5), solarise (0.2)."""
    colour = image.mode == "RGB"
    if rng.random() < 0.8:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.4))
        if colour:
            image = ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.2))
            image = _shift_hue(image, rng.uniform(-0.1, 0.1))
    if colour and rng.random() < 0.2:
        image = image.convert("L").convert("RGB")
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    if rng.random() < 0.2:
        image = ImageOps.solarize(image, threshold=128)
    return image


@dataclass(frozen=True)
class ImageAugmentation:
    """Random crop to the model's input size, optional flip / DINO colour ops, then rescale + normalise."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str  # PIL mode: "RGB" or "L"
    config: AugmentConfig

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        image = image.convert(self.mode)
        box = random_resized_crop_box(image.width, image.height, self.config.crop_scale, rng)
        image = image.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC, box=box)
        if self.config.flip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if self.config.kind == "dino":
            image = dino_photometric(image, rng)
        pixels = np.asarray(image, dtype=np.float32).reshape(self.size[0], self.size[1], -1) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    @classmethod
    def for_model(cls, processor, backbone_config, config: AugmentConfig) -> ImageAugmentation:
        """Input size from the model config; mean / std from its image processor (as in eval)."""
        size = backbone_config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        channels = backbone_config.num_channels
        mean = _per_channel(getattr(processor, "image_mean", None), channels)
        std = _per_channel(getattr(processor, "image_std", None), channels)
        return cls(size=size, mean=mean, std=std, mode="RGB" if channels == 3 else "L", config=config)


def _per_channel(values, channels: int) -> tuple[float, ...]:
    """Processor mean / std as one value per channel (a scalar or single value is repeated)."""
    values = [0.5] if values is None else [values] if isinstance(values, (int, float)) else list(values)
    if len(values) == 1:
        values = values * channels
    return tuple(float(v) for v in values[:channels])


class AugmentedImages(Dataset):
    """Unlabelled images with per-(seed, epoch, index) augmentations; ``set_epoch`` is called by the loader."""

    def __init__(self, source: ProcessedDataset, augmentation: ImageAugmentation, seed: int):
        self.source = source
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.augmentation(self.source[index]["input"], rng)

    def collate(self, rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack(rows)}
