"""A minimal PNG writer (zlib + struct), so the demo and diagnostics need no imaging
library. 8-bit grayscale [H, W] or RGB [H, W, 3] uint8 tensors; no interlacing."""
from __future__ import annotations

import os
import struct
import zlib

import torch

__all__ = ["write_png", "encode_png", "upscale", "colorize"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a uint8 image [H, W] (grayscale) or [H, W, 3] (RGB)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.dim() == 2:
        color_type, channels = 0, 1
    elif image.dim() == 3 and image.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"image must be [H, W] or [H, W, 3], got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")
    rows = image.detach().cpu().contiguous().view(height, width * channels)
    # Each scanline starts with its filter type (0: none).
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", header),
        _chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), 6)),
        _chunk(b"IEND", b""),
    ])


def write_png(path: str | os.PathLike, image: torch.Tensor) -> str:
    """Write `image` (see encode_png) to `path`; returns the path as a string."""
    data = encode_png(image)
    with open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def upscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement by an integer factor along H and W."""
    return image.repeat_interleave(factor, dim=0).repeat_interleave(factor, dim=1)


# A qualitative palette (Tableau-like), cycled for label images.
_PALETTE = torch.tensor(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120]],
    dtype=torch.uint8,
)


def colorize(labels: torch.Tensor, background: int = -1) -> torch.Tensor:
    """RGB [H, W, 3] image of integer labels [H, W]; `background` cells are white."""
    labels = labels.long()
    rgb = _PALETTE[labels.clamp_min(0) % len(_PALETTE)]
    rgb[labels == background] = 255
    return rgb
