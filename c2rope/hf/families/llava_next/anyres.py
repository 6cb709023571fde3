"""Anyres images (LLaVA-NeXT, LLaVA-OneVision): which grids every image's tokens form.

transformers turns one anyres image into, in this order (docs/anyres.md):
  1. the base view: the whole image resized to one tile, `side x side` tokens
     (side = vision image_size // patch_size);
  2. the high-resolution part: the tiles of the best grid pinpoint stitched into one
     grid, cropped back to the image's aspect ratio ("unpadded"), on OneVision shrunk
     bilinearly when it holds more than `anyres_max_N` tiles' worth of tokens, with an
     `image_newline` token after every row;
and scatters those features, image after image, into the image placeholder tokens.

c2rope gives each part its own grid, with its own centre and rings. The newline token
of a row is the extra column at the right edge of that row, so the high-resolution part
is one raster `H x (W + 1)` grid: the span stays contiguous, a newline sits beside the
patches of its own row (same y, x one step right of the last patch), and it belongs to
the Chebyshev rings like any token of that row. Images that transformers leaves
untiled (OneVision: a sample with several images) are the base grid plus one closing
newline, which is text; a OneVision video is one pooled grid per frame plus one closing
newline, which is text.

Everything release-specific is transformers' own code, looked up in the model's module
(`get_anyres_image_grid_shape`, `unpad_image`); only OneVision's shrink rule, which is
not a function there, is restated here. The token count derived per image is checked
against the placeholder tokens the input really holds.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import re
from typing import Callable, List, Optional, Sequence, Tuple

import torch

Grid = Tuple[int, int]
Spans = Tuple[Tuple[Tuple[int, int, int], ...], ...]

# transformers' OneVision shrinks the high-res grid only above this ratio to its budget.
_SHRINK_THRESHOLD = 1.1


@dataclasses.dataclass(frozen=True)
class ImageTokens:
    """The placeholder tokens of one image (or video): its grids in sequence order, then
    `closing_text` tokens (a closing newline) that are text."""

    grids: Tuple[Grid, ...]
    closing_text: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(h * w for h, w in self.grids) + self.closing_text

    def describe(self) -> str:
        parts = [f"{h}x{w}" for h, w in self.grids] + ["newline"] * self.closing_text
        return " + ".join(parts)


def _helper(module, name: str) -> Callable:
    function = getattr(module, name, None)
    if not callable(function):
        raise TypeError(f"c2rope: {module.__name__} has no {name}(); this transformers release's anyres code is "
                        "not supported")
    return function


def _max_tiles(vision_aspect_ratio) -> int:
    match = re.fullmatch(r"anyres_max_(\d+)", str(vision_aspect_ratio))
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"c2rope: config.vision_aspect_ratio must be 'anyres_max_N' (N >= 1), got "
                         f"{vision_aspect_ratio!r}")
    return int(match.group(1))


class AnyresGeometry:
    """How a LLaVA-NeXT / OneVision model lays out an image's tokens, read from its config
    and from the helpers of its own transformers module."""

    def __init__(self, model: torch.nn.Module):
        inner = getattr(model, "model", model)
        self._read(model.config, importlib.import_module(type(model).__module__),
                   getattr(inner, "image_newline", None) is not None)

    @classmethod
    def from_config(cls, config, module, newline: bool) -> "AnyresGeometry":
        """The same geometry without a transformers model (the vLLM plugin): `module` is
        the family's transformers modeling module, `newline` whether the model has an
        `image_newline`."""
        geometry = cls.__new__(cls)
        geometry._read(config, module, newline)
        return geometry

    def _read(self, config, module, newline: bool) -> None:
        vision = config.vision_config
        self.tile = int(vision.image_size)
        self.side = self.tile // int(vision.patch_size)
        self.pinpoints = [list(p) for p in config.image_grid_pinpoints]
        self._grid_shape = _helper(module, "get_anyres_image_grid_shape")
        self._unpad = _helper(module, "unpad_image")
        self.onevision = config.model_type == "llava_onevision"
        # Every release so far reads the budget from the config only (the forward's own
        # vision_aspect_ratio argument never reaches pack_image_features).
        self.max_tiles = _max_tiles(config.vision_aspect_ratio) if self.onevision else None
        self.newline = int(bool(newline))

    def image(self, height: int, width: int, tiled: bool = True) -> ImageTokens:
        """The tokens of one image of `height x width` pixels (its `image_sizes` row)."""
        base = (self.side, self.side)
        if not tiled:
            return ImageTokens((base,), self.newline)
        rows, cols = self.tile_grid(height, width)
        stitched = torch.empty(0, rows * self.side, cols * self.side)
        high_h, high_w = (int(v) for v in self._unpad(stitched, [height, width]).shape[1:])
        if self.max_tiles is not None:
            ratio = math.sqrt(high_h * high_w / (self.max_tiles * self.side ** 2))
            if ratio > _SHRINK_THRESHOLD:
                high_h, high_w = int(high_h // ratio), int(high_w // ratio)
        high = (high_h, high_w + self.newline)
        if high[0] * high[1] == 0:
            # A very wide image unpads to 0 rows: transformers appends an empty part (no
            # rows, so no newlines either) and the image is its base view alone. A very
            # tall one unpads to 0 columns and keeps only its rows' newlines: an H x 1 grid.
            return ImageTokens((base,))
        return ImageTokens((base, high))

    def tile_grid(self, height: int, width: int) -> Grid:
        """(rows, columns) of tiles transformers cuts the image into (its best pinpoint)."""
        rows, cols = self._grid_shape([height, width], self.pinpoints, self.tile)
        return int(rows), int(cols)

    def video(self, frames: int) -> ImageTokens:
        """OneVision: every frame pooled 2x2 (rounded up), one newline after the last."""
        pooled = math.ceil(self.side / 2)
        return ImageTokens(((pooled, pooled),) * frames, self.newline)

    def images(self, image_sizes, batch_num_images=None) -> List[ImageTokens]:
        """The tokens of every image of a call, in order. `batch_num_images` (OneVision):
        images per sample; transformers tiles only the images of single-image samples."""
        sizes = _check_image_sizes(image_sizes)
        tiled = [True] * len(sizes)
        if batch_num_images is not None and self.onevision:
            counts = [int(n) for n in torch.as_tensor(batch_num_images).reshape(-1).tolist()]
            if sum(counts) != len(sizes) or min(counts, default=0) < 0:
                raise ValueError(f"batch_num_images {counts} does not add up to the {len(sizes)} rows of image_sizes")
            tiled = [n == 1 for n in counts for _ in range(n)]
        return [self.image(h, w, t) for (h, w), t in zip(sizes, tiled)]


def _check_image_sizes(image_sizes) -> List[Tuple[int, int]]:
    if isinstance(image_sizes, torch.Tensor):
        if image_sizes.is_floating_point() or image_sizes.is_complex() or image_sizes.dtype == torch.bool:
            raise TypeError(f"image_sizes must be an integer tensor [num_images, 2], got {image_sizes.dtype}")
        image_sizes = image_sizes.tolist()
    try:
        sizes = [(int(h), int(w)) for h, w in image_sizes]
    except (TypeError, ValueError):
        raise ValueError("image_sizes must be [num_images, 2]: (height, width) of every image") from None
    for i, (h, w) in enumerate(sizes):
        if h < 1 or w < 1:
            raise ValueError(f"image_sizes[{i}] = ({h}, {w}) must be positive")
    return sizes


def placeholder_spans(input_ids: torch.Tensor, token_id: int, items: Sequence[ImageTokens], what: str) -> Spans:
    """Grid spans (start, H, W) per row, relative to input_ids' first token, for `items`
    scattered in order over the `token_id` tokens (row-major, as transformers' masked
    scatter fills them). ValueError naming the image whose tokens do not fit."""
    batch = input_ids.shape[0]
    where = (input_ids == token_id).nonzero().tolist()  # [(row, position)] in row-major order
    needed = sum(item.num_tokens for item in items)
    spans: List[List[Tuple[int, int, int]]] = [[] for _ in range(batch)]
    used = 0
    for index, item in enumerate(items):
        n = item.num_tokens
        if used + n > len(where):
            raise ValueError(f"c2rope: {what} {index} ({item.describe()} = {n} tokens) does not fit: input_ids hold "
                             f"{len(where)} {what} tokens, the {len(items)} {what}s need {needed}")
        (row, start), (last_row, last) = where[used], where[used + n - 1]
        if last_row != row or last - start != n - 1:
            raise ValueError(f"c2rope: {what} {index} ({item.describe()} = {n} tokens) needs {n} consecutive "
                             f"{what} tokens from row {row}, position {start}; the run there is shorter")
        for h, w in item.grids:
            spans[row].append((start, h, w))
            start += h * w
        used += n
    if used != len(where):
        raise ValueError(f"c2rope: input_ids hold {len(where)} {what} tokens but the {len(items)} {what}s need "
                         f"{needed}")
    return tuple(tuple(row) for row in spans)


def merge_rows(*parts: Optional[Spans]) -> Optional[Spans]:
    """Row-wise union of span sets (images and videos), each row sorted."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    return tuple(tuple(sorted(s for part in present for s in part[row])) for row in range(len(present[0])))
