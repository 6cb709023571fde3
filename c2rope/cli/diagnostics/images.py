"""Heat maps as uint8 RGB images for c2rope._png (no imaging library needed)."""
from __future__ import annotations

from typing import Sequence

import torch

from .. import _png

__all__ = ["sequential", "diverging", "side_by_side"]

# Anchors of a perceptually ordered dark-blue -> yellow ramp (viridis-like).
_SEQUENTIAL = torch.tensor(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float64
)
# Blue -> white -> red, for signed values such as log ratios.
_DIVERGING = torch.tensor([[59, 76, 192], [255, 255, 255], [180, 4, 38]], dtype=torch.float64)


def _ramp(anchors: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear colour of t in [0, 1] (NaN -> grey): uint8 [..., 3]."""
    nan = torch.isnan(t)
    t = t.nan_to_num(0.0).clamp(0, 1) * (len(anchors) - 1)
    low = t.floor().long().clamp(max=len(anchors) - 2)
    frac = (t - low).unsqueeze(-1)
    rgb = anchors[low] * (1 - frac) + anchors[low + 1] * frac
    rgb[nan] = 160.0
    return rgb.round().to(torch.uint8)


def sequential(values: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """values [H, W] mapped linearly from [lo, hi] onto the dark -> bright ramp."""
    span = hi - lo if hi > lo else 1.0
    return _ramp(_SEQUENTIAL, (values.double() - lo) / span)


def diverging(values: torch.Tensor, limit: float) -> torch.Tensor:
    """values [H, W] in [-limit, limit]: blue below 0, white at 0, red above."""
    return _ramp(_DIVERGING, (values.double() / limit + 1) / 2)


def side_by_side(panels: Sequence[torch.Tensor], scale: int, gap: int = 6) -> torch.Tensor:
    """RGB panels of equal height, enlarged by `scale`, on a white strip `gap` pixels apart."""
    parts = []
    for i, panel in enumerate(panels):
        if i:
            parts.append(torch.full((panel.shape[0] * scale, gap, 3), 255, dtype=torch.uint8))
        parts.append(_png.upscale(panel, scale))
    return torch.cat(parts, dim=1)
