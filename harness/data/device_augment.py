"""``data.augment_on: device``: the seed's augmentations as batched tensor operations on the device.

Per-sample albumentations costs about 0.2 ms an image on one CPU core; a GPU trains ResNet18 far
faster than a few loader workers can augment. This path reads the same ``data.augment`` list and
applies PadIfNeeded(constant) + RandomCrop, HorizontalFlip and single-hole CoarseDropout to whole
normalized batches, with the distributions albumentations uses (offsets and hole corners uniform).
Randomness comes from a generator seeded by (seed, iteration, rank), so a resumed run replays it
and processes that train on different images also draw different crops, flips and holes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.core.errors import HarnessError
from harness.data.config import pixel_sizes

# The transforms the device path applies to every image, with albumentations' default p for each:
# a spec must say (or default to) p: 1.0 for them, since on the device they are never skipped.
EVERY_IMAGE_DEFAULT_P = {"PadIfNeeded": 1.0, "RandomCrop": 1.0, "CoarseDropout": 0.5}
SUPPORTED = "PadIfNeeded (constant border), RandomCrop, HorizontalFlip, CoarseDropout (one fixed-size hole)"


@dataclass
class DeviceAugmentPlan:
    pad: int = 0  # pixels of constant padding on each side before the crop
    flip_p: float = 0.0
    hole: int = 0  # side of the square Cutout hole; 0 for none
    pad_fill: float = 0.0  # on 0..255 pixel values, like albumentations' `fill`
    hole_fill: float = 0.0


def _single(values: Any, key: str) -> int:
    low, high = values
    if low != high:
        raise HarnessError(f"{key} = {list(values)}: data.augment_on=device supports one fixed size (equal bounds)")
    return int(low)


def _hole_side(values: Any, side: int, key: str) -> int:
    """A hole range's one size in pixels; a float is a fraction of the side, as albumentations reads it."""
    size = _single(values, key) if not isinstance(values[0], float) else None
    if size is None:
        if values[0] != values[1]:
            raise HarnessError(f"{key} = {list(values)}: data.augment_on=device supports one fixed size (equal bounds)")
        size = round(values[0] * side)
    return size


def plan_from_augment(augment: Sequence[dict[str, Any]], image_size: tuple[int, int] = (32, 32)) -> DeviceAugmentPlan:
    """Translate the albumentations list for images of ``image_size`` (height, width; a size written
    as a float is a fraction of the side); anything this path cannot do exactly is an error."""
    height, width = image_size
    plan = DeviceAugmentPlan()
    for index, spec in enumerate(pixel_sizes(spec, height, width) for spec in augment):
        where = f"data.augment[{index}]"
        name = spec["name"]
        if name in EVERY_IMAGE_DEFAULT_P and float(spec.get("p", EVERY_IMAGE_DEFAULT_P[name])) != 1.0:
            raise HarnessError(f"{where} ({name}): data.augment_on=device needs p: 1.0")
        if name == "PadIfNeeded":
            if spec.get("border_mode", 4) != 0:
                raise HarnessError(f"{where} (PadIfNeeded): data.augment_on=device needs border_mode: 0 (constant)")
            plan.pad = (int(spec["min_height"]) - height) // 2
            if (int(spec["min_width"]) - width) // 2 != plan.pad:
                raise HarnessError(f"{where} (PadIfNeeded): data.augment_on=device pads every side alike")
            plan.pad_fill = float(spec.get("fill", 0))
        elif name == "RandomCrop":
            if (spec["height"], spec["width"]) != (height, width):
                raise HarnessError(
                    f"{where} (RandomCrop): data.augment_on=device crops back to the images' {width}x{height} "
                    "(height: 1.0, width: 1.0)"
                )
        elif name == "HorizontalFlip":
            plan.flip_p = float(spec.get("p", 0.5))
        elif name == "CoarseDropout":
            if _single(spec.get("num_holes_range", (1, 1)), f"{where}.num_holes_range") != 1:
                raise HarnessError(f"{where}.num_holes_range: data.augment_on=device supports exactly one hole")
            plan.hole = _hole_side(spec["hole_height_range"], height, f"{where}.hole_height_range")
            if _hole_side(spec["hole_width_range"], width, f"{where}.hole_width_range") != plan.hole:
                raise HarnessError(f"{where}: data.augment_on=device supports square holes")
            plan.hole_fill = float(spec.get("fill", 0))
        else:
            raise HarnessError(f"{where} ({name}): not available with data.augment_on=device (supported: {SUPPORTED})")
    return plan


class DeviceAugment:
    """Callable on a normalized (N, C, H, W) batch already on the device."""

    def __init__(
        self,
        plan: DeviceAugmentPlan,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.plan = plan
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.device = device
        mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
        # fills are given on 0..255 pixels; the batch is already normalized
        self.pad_fill = ((plan.pad_fill / 255.0 - mean_t) / std_t).view(1, -1, 1, 1)
        self.hole_fill = ((plan.hole_fill / 255.0 - mean_t) / std_t).view(1, -1, 1, 1)
        self.generator = torch.Generator(device=device)

    def __call__(self, images: torch.Tensor, iteration: int) -> torch.Tensor:
        # one distinct seed per (seed, iteration, rank); a single process keeps seed * 1_000_003 + iteration
        self.generator.manual_seed((self.seed * 1_000_003 + iteration) * self.world_size + self.rank)
        n, _, h, w = images.shape
        rows = torch.arange(h, device=images.device)
        cols = torch.arange(w, device=images.device)
        out = images
        if self.plan.pad:
            p = self.plan.pad
            dy = torch.randint(0, 2 * p + 1, (n,), generator=self.generator, device=self.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=self.generator, device=self.device)
            src_r = (dy[:, None] + rows[None] - p)[:, None, :, None]  # source row of each output row
            src_c = (dx[:, None] + cols[None] - p)[:, None, None, :]
            inside = (src_r >= 0) & (src_r < h) & (src_c >= 0) & (src_c < w)
            gathered = out.gather(2, src_r.clamp(0, h - 1).expand(n, out.shape[1], h, 1).expand(-1, -1, -1, w))
            gathered = gathered.gather(3, src_c.clamp(0, w - 1).expand(n, out.shape[1], h, w))
            out = torch.where(inside, gathered, self.pad_fill.to(out.dtype))
        if self.plan.flip_p:
            flip = torch.rand(n, generator=self.generator, device=self.device) < self.plan.flip_p
            out = torch.where(flip[:, None, None, None], out.flip(3), out)
        if self.plan.hole:
            s = self.plan.hole
            top = torch.randint(0, h - s + 1, (n,), generator=self.generator, device=self.device)
            left = torch.randint(0, w - s + 1, (n,), generator=self.generator, device=self.device)
            in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + s)
            in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + s)
            hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
            out = torch.where(hole, self.hole_fill.to(out.dtype), out)
        return out
