"""InternVL (transformers' `internvl`: InternVL3, InternVL3.5 in HF format; docs/tiles.md):

    c2rope.patch_model(model, c2rope.C2RoPEConfig())

InternVL's language model (Qwen2, Qwen3 or Llama) uses plain 1-D RoPE. Its processor
cuts an image into tiles of `vision_config.image_size` pixels (up to `max_patches`, plus
a thumbnail of the whole image when there is more than one), and every tile becomes
`side x side` tokens: `image_size / patch_size` patches per side, pixel-shuffled by
`downsample_ratio` (448 px, patch 14, ratio 0.5: 16 x 16 = 256 tokens), in raster
order. In the prompt an image is

    <img> [tile 1] [tile 2] ... [thumbnail] </img>

with every tile token the image token (`image_token_id`) and `<img>` / `</img>` other
ids; a video frame is one tile between its own `<img>` / `</img>`.

c2rope gives every tile its own grid (centre, rings, Chebyshev mask); `<img>`, `</img>`
and any text between them are text. The tile grid comes from the config, and the input
is checked against it: every run of image tokens must hold whole tiles, and when the
call carries pixels, as many tiles as `pixel_values` has rows (ValueError otherwise).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .llava_next.anyres import ImageTokens, placeholder_spans
from .llama import patch_decoder
from .. import introspect
from ..pipeline import to_kwargs
from ..record import PatchRecord, Unpicklable
from ..state import default_image_token_id, refuse_grid
from ..registry import register_patcher

MODEL_TYPES = ("internvl",)
CHECK_CLASSES = {"internvl": "InternVLForConditionalGeneration"}
DOCS = "docs/tiles.md"


def require_release(model_type: str) -> None:
    """TypeError unless the installed transformers ships InternVL."""
    introspect.require_release(model_type, "InternVL", DOCS)


def _pair(value, name: str) -> Tuple[int, int]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise TypeError(f"c2rope: InternVL {name} must be a positive int or a pair of them, got {value!r}")
    return pair


def tile_grid(config) -> Tuple[int, int]:
    """(rows, columns) of tokens of one tile: image_size / patch_size patches per side,
    times downsample_ratio (the pixel shuffle)."""
    vision = config.vision_config
    size, patch = _pair(vision.image_size, "vision_config.image_size"), _pair(vision.patch_size,
                                                                             "vision_config.patch_size")
    ratio = float(config.downsample_ratio)
    grid = []
    for axis, (pixels, step) in enumerate(zip(size, patch)):
        patches = pixels / step
        tokens = patches * ratio
        if patches != int(patches) or tokens != int(tokens) or tokens < 1:
            raise TypeError(f"c2rope: InternVL vision_config.image_size {size} / patch_size {patch} x downsample_ratio "
                            f"{ratio} is not a whole number of tokens per tile side")
        grid.append(int(tokens))
    return grid[0], grid[1]


def _tile_count(arguments: dict) -> Optional[int]:
    """Tiles the call carries: rows of pixel_values, or of the encoded features
    (generate() from 5.24 encodes the images first and passes mm_encoder_outputs)."""
    pixels = arguments.get("pixel_values")
    if isinstance(pixels, torch.Tensor):
        return int(pixels.shape[0])
    encoded = getattr((arguments.get("mm_encoder_outputs") or {}).get("image"), "pooler_output", None)
    if isinstance(encoded, torch.Tensor) and encoded.dim() == 3:
        return int(encoded.shape[0])
    return None


class TileSpans(Unpicklable):
    """The inner model's entry hook `spans(names, args, kwargs)`: one grid per tile, in
    the order of the image tokens (an object, so deep copies of a patched model copy it)."""

    def __init__(self, image_token_id: int, grid: Tuple[int, int]):
        self.image_token_id = image_token_id
        self.grid = grid

    def __call__(self, names, args, kwargs):
        arguments = to_kwargs(names, args, kwargs)
        ids = arguments.get("input_ids")
        tiles = _tile_count(arguments)
        if ids is None:
            if tiles is not None:
                raise ValueError("c2rope: InternVL images given with inputs_embeds: c2rope finds the tiles in "
                                 "input_ids; pass input_ids, or the layout as visual_layout=")
            return None
        return self.spans(ids, tiles)

    def spans(self, ids: torch.Tensor, tiles: Optional[int] = None):
        h, w = self.grid
        per_tile = h * w
        found = int((ids == self.image_token_id).sum())
        if found % per_tile:
            raise ValueError(f"c2rope: input_ids hold {found} InternVL image tokens, not a whole number of tiles of "
                             f"{h}x{w} = {per_tile} tokens (vision_config image_size / patch_size x "
                             f"downsample_ratio)")
        if tiles is not None and tiles != found // per_tile:
            raise ValueError(f"c2rope: input_ids hold {found} image tokens = {found // per_tile} tiles of {h}x{w}, "
                             f"but pixel_values holds {tiles} tiles")
        return placeholder_spans(ids, self.image_token_id, [ImageTokens((self.grid,))] * (found // per_tile),
                                 "tile")


@register_patcher(*MODEL_TYPES)
def _patch_internvl(model: nn.Module, record: PatchRecord, state) -> None:
    require_release(model.config.model_type)
    config = model.config
    refuse_grid(state, "InternVL", "its tile grid from the config (vision_config image_size / patch_size x "
                "downsample_ratio)")
    default_image_token_id(state, config)
    state.grid = tile_grid(config)
    patch_decoder(model, record, state, inner_spans=TileSpans(state.image_token_id, state.grid))


def check_inputs(model, generator: torch.Generator):
    """`python -m c2rope check`: one image of two tiles (a tile and its thumbnail)
    between <img> / </img>-like text tokens."""
    from ...cli.check_parts import VOCAB

    config = model.config
    h, w = tile_grid(config)
    vision = config.vision_config
    size = _pair(vision.image_size, "vision_config.image_size")
    tiles = 2
    image = config.image_token_id
    text_ids = torch.randint(3, VOCAB - 2, (1, 12), generator=generator)
    tokens = tiles * h * w
    # the 2 text tokens next to the tiles stand for <img> and </img>
    ids = torch.cat([text_ids[:, :6], torch.full((1, tokens), image), text_ids[:, 6:]], dim=1)
    pixels = torch.randn(tiles, getattr(vision, "num_channels", 3), *size, generator=generator)
    with_image = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    text = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    what = (f"synthetic image: {tiles} tiles of {size[0]}x{size[1]} px -> {tiles} grids of {h}x{w} tokens "
            f"(id {image}), between 6 + 6 text tokens")
    return with_image, text, slice(6, 6 + tokens + 6), what


__all__ = ["CHECK_CLASSES", "DOCS", "MODEL_TYPES", "TileSpans", "check_inputs", "require_release", "tile_grid"]
