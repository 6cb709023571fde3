"""Idefics3 and SmolVLM / SmolVLM2 (transformers' `idefics3` and `smolvlm`; docs/tiles.md,
"SmolVLM and Idefics3"):

    c2rope.patch_model(model, c2rope.C2RoPEConfig())

Both models run a plain 1-D-RoPE Llama-style decoder (`model.model.text_model`) over a
prompt in which every image is cut into tiles. The processor writes, per image split
into R x C tiles (an image it does not split, and every SmolVLM2 video frame, is the
global part alone):

    <fake_token_around_image><row_1_col_1><image> x n ... <fake_token_around_image><row_R_col_C><image> x n \\n
    \\n<fake_token_around_image><global-img><image> x n <fake_token_around_image>

with n = image_seq_len = (image_size // patch_size // scale_factor)^2. The vision tower
encodes every tile (the split tiles and the global image alike) as a square grid of
image_size // patch_size patches, the connector pixel-shuffles it by scale_factor into
a `t x t` grid (t = image_size // patch_size // scale_factor) in raster order, and the
model scatters those features, tile after tile, over the `image_token_id` tokens.

So c2rope gives **every tile its own t x t grid** (centre, rings, Chebyshev mask), and
everything between tiles (the fake token, the row/column tag, the global-image tag, the
newlines, SmolVLM2's frame timestamps) is text. The grid comes from the config (never
assumed from the input) and is checked against the input of every call: each run of
image tokens must hold a whole number of tiles, and the tiles in `pixel_values` (the
non-zero ones: transformers drops all-zero padding tiles) or in pre-encoded features must
be exactly as many as the runs hold (ValueError naming what disagrees). Image tokens in
a call that gives no pixels and no features (a generated token, a decoding step) are
text, as transformers leaves them.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from .llama import patch_decoder
from .. import introspect
from ..pipeline import to_kwargs
from ..record import Unpicklable
from ..state import default_image_token_id, refuse_grid
from ..registry import register_patcher

MODEL_TYPES = ("idefics3", "smolvlm")
# The class `python -m c2rope check` builds when config.json names no usable architecture.
CHECK_CLASSES = {"idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}
DOCS = "docs/tiles.md"
_NAMES = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}
# Where a call may hand over image features it encoded before (the name changed in 5.x).
_FEATURE_ARGUMENTS = ("mm_encoder_outputs", "image_hidden_states")

Spans = Tuple[Tuple[Tuple[int, int, int], ...], ...]


def require_release(model_type: str) -> None:
    """TypeError unless the installed transformers ships the family (SmolVLM since 4.50,
    Idefics3 since 4.45: every release c2rope's modern line supports has both)."""
    introspect.require_release(model_type, _NAMES.get(model_type, model_type), f"{DOCS}, 'SmolVLM and Idefics3'")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"c2rope: config.{name} must be a positive int, got {value!r}")
    return value


class TileGeometry:
    """The token grid of one tile, from the model's config: `side` patches per side,
    pixel-shuffled by `scale` into a `tile x tile` grid of `tokens` tokens."""

    def __init__(self, config):
        vision = config.vision_config
        self.model_type = config.model_type
        self.image_size = _positive_int(vision.image_size, "vision_config.image_size")
        self.patch_size = _positive_int(vision.patch_size, "vision_config.patch_size")
        self.scale = _positive_int(config.scale_factor, "scale_factor")
        self.side = self.image_size // self.patch_size
        if self.side < 1 or self.side % self.scale:
            raise ValueError(
                f"c2rope: {self.model_type}: vision_config.image_size {self.image_size} // patch_size "
                f"{self.patch_size} = {self.side} patches per side do not pixel-shuffle by scale_factor "
                f"{self.scale} into a whole grid")
        self.tile = self.side // self.scale
        self.tokens = self.tile * self.tile

    def describe(self) -> str:
        return (f"tiles of {self.image_size}x{self.image_size} px: {self.side}x{self.side} patches of "
                f"{self.patch_size} px, pixel-shuffled by {self.scale} into {self.tile}x{self.tile} = "
                f"{self.tokens} image tokens")


def tile_spans(input_ids: torch.Tensor, image_token_id: int, geometry: TileGeometry) -> Tuple[Spans, int]:
    """(spans per row, number of tiles): every run of image tokens cut into consecutive
    `tile x tile` grids, positions relative to input_ids' first token. ValueError for a
    run that is not a whole number of tiles."""
    is_image = (input_ids == image_token_id).cpu()
    batch = is_image.shape[0]
    pad = torch.zeros(batch, 1, dtype=torch.int8)
    edges = torch.diff(is_image.to(torch.int8), dim=1, prepend=pad, append=pad)
    rows, starts = (edges == 1).nonzero(as_tuple=True)
    ends = (edges == -1).nonzero(as_tuple=True)[1]
    spans: List[List[Tuple[int, int, int]]] = [[] for _ in range(batch)]
    tiles = 0
    for row, start, end in zip(rows.tolist(), starts.tolist(), ends.tolist()):
        length = end - start
        if length % geometry.tokens:
            raise ValueError(
                f"c2rope: {geometry.model_type}: the image-token run at row {row}, positions [{start}, {end}) holds "
                f"{length} tokens, not a whole number of tiles of {geometry.tokens} ({geometry.describe()}); "
                "the prompt does not match this model's config")
        for first in range(start, end, geometry.tokens):
            spans[row].append((first, geometry.tile, geometry.tile))
            tiles += 1
    return tuple(tuple(row) for row in spans), tiles


def _pixel_tiles(pixel_values, geometry: TileGeometry) -> int:
    """The tiles of `pixel_values` [batch, images, C, H, W] the model encodes: every one
    that is not all zeros (transformers drops those as padding)."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"c2rope: {geometry.model_type}: pixel_values must be [batch, images, channels, height, "
                         f"width], got {shape}")
    height, width = pixel_values.shape[-2:]
    if (height, width) != (geometry.image_size, geometry.image_size):
        raise ValueError(
            f"c2rope: {geometry.model_type}: pixel_values hold {height}x{width} px tiles, but the config's tiles are "
            f"{geometry.image_size}x{geometry.image_size} px (vision_config.image_size), so their token grids "
            f"are not the {geometry.tile}x{geometry.tile} the prompt's image tokens are counted in")
    if pixel_values.numel() == 0:
        return 0
    flat = pixel_values.reshape(pixel_values.shape[0] * pixel_values.shape[1], -1)
    return int((flat != 0).any(dim=1).sum())


def _feature_rows(features) -> Optional[int]:
    """Image-token rows held by features the model encoded earlier; None when the call
    hands over none (no argument, or a dict without image features)."""
    if isinstance(features, dict):
        features = getattr(features.get("image"), "pooler_output", features.get("image"))
    if features is None:
        return None
    parts = list(features) if isinstance(features, (list, tuple)) else [features]
    return sum(part.numel() // part.shape[-1] for part in parts if isinstance(part, torch.Tensor) and part.dim())


def call_spans(geometry: TileGeometry, image_token_id: int, arguments: dict) -> Optional[Spans]:
    """The tile grids of this call's input_ids (relative to its first token); empty rows
    when the call scatters no image features."""
    ids = arguments.get("input_ids")
    pixels = arguments.get("pixel_values")
    rows = next((r for r in (_feature_rows(arguments.get(n)) for n in _FEATURE_ARGUMENTS) if r is not None), None)
    if ids is None:
        if pixels is not None or rows is not None:
            raise ValueError(f"c2rope: {geometry.model_type}: images given with inputs_embeds: c2rope finds the tiles "
                             "in input_ids; pass input_ids, or the layout as visual_layout=")
        return None
    if ids.dim() != 2:
        return None
    empty = tuple(() for _ in range(ids.shape[0]))
    if (pixels is None and rows is None) or not bool((ids == image_token_id).any()):
        return empty  # nothing is scattered into image tokens: they stay text, as in transformers
    spans, tiles = tile_spans(ids, image_token_id, geometry)
    if pixels is not None:
        given, what = _pixel_tiles(pixels, geometry), "pixel_values hold"
        given_tokens = given * geometry.tokens
    else:
        given_tokens, what = rows, "the encoded image features hold"
        given = rows / geometry.tokens
    if given_tokens != tiles * geometry.tokens:
        raise ValueError(
            f"c2rope: {geometry.model_type}: input_ids hold {tiles} tile(s) of image tokens "
            f"({tiles * geometry.tokens} tokens, {geometry.tokens} per tile) but {what} {given:g} tile(s) "
            f"({given_tokens} tokens; {geometry.describe()})")
    return spans


class TileSpans(Unpicklable):
    """The entry hook's `spans(names, args, kwargs)` for tiled models (an object, not a
    closure, so deep copies of a patched model copy it)."""

    def __init__(self, geometry: TileGeometry, image_token_id: int):
        self.geometry = geometry
        self.image_token_id = image_token_id

    def __call__(self, names, args, kwargs):
        return call_spans(self.geometry, self.image_token_id, to_kwargs(names, args, kwargs))


@register_patcher(*MODEL_TYPES)
def _patch_tiles(model: nn.Module, record, state) -> None:
    config = model.config
    require_release(config.model_type)
    refuse_grid(state, config.model_type, "every tile's grid from its config (vision_config.image_size, "
                "patch_size, scale_factor)")
    geometry = TileGeometry(config)
    inner = getattr(model, "model", model)
    own = getattr(inner, "image_seq_len", None)
    if isinstance(own, int) and own != geometry.tokens:
        raise TypeError(f"c2rope: {type(inner).__name__}.image_seq_len is {own}, but its config gives "
                        f"{geometry.describe()}; this release lays out tiles differently")
    default_image_token_id(state, config)
    if state.image_token_id is None:
        raise TypeError(f"c2rope: {config.model_type} config has no image_token_id; pass image_token_id=")
    state.grid = (geometry.tile, geometry.tile)
    patch_decoder(model, record, state, inner_spans=TileSpans(geometry, state.image_token_id))


# ---------------------------------------------------------------- python -m c2rope check

def check_inputs(model: nn.Module, generator: torch.Generator, text_tokens: int = 6, vocab: int = 510):
    """`python -m c2rope check`: one image split into 1 x 2 tiles plus its global image,
    laid out as the processor writes it (random text ids stand in for the fake-token,
    row/column, global-image and newline tokens). Returns (kwargs with the image, kwargs
    text only, the rows to compare, a one-line description)."""
    config = model.config
    geometry = TileGeometry(config)
    image_token_id = config.image_token_id
    channels = getattr(config.vision_config, "num_channels", 3)

    def words(n):
        ids = torch.randint(3, vocab, (1, n), generator=generator)
        return ids.masked_fill(ids == image_token_id, 3)

    tile = torch.full((1, geometry.tokens), image_token_id)
    before, after = words(text_tokens), words(text_tokens)
    # <fake><row_1_col_1> tile <fake><row_1_col_2> tile \n \n<fake><global-img> tile <fake>
    pieces = [before, words(2), tile, words(2), tile, words(3), words(1), tile, words(1), after]
    image_ids = torch.cat(pieces, dim=1)
    pixels = torch.randn(1, 3, channels, geometry.image_size, geometry.image_size, generator=generator)
    with_image = {"input_ids": image_ids, "attention_mask": torch.ones_like(image_ids), "pixel_values": pixels}
    text_ids = torch.cat([before, after], dim=1)
    text = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    rows = slice(text_tokens, image_ids.shape[1])
    what = (f"synthetic image: 1x2 tiles + the global image, {geometry.describe()} (id {image_token_id}), "
            f"separator tokens as text, between {text_tokens} + {text_tokens} text tokens")
    return with_image, text, rows, what


def check_uncached_tokens(model: nn.Module, generate: dict) -> torch.Tensor:
    """`python -m c2rope check`: the greedy tokens of full forwards without a KV cache, the
    image given at every step (one row), for comparison with generate()'s cached tokens.
    Not generate(use_cache=False): transformers 5.0's Idefics3 / SmolVLM drop the pixels
    after its first step, patched or not, so its uncached tokens are not the model's."""
    arguments = {k: v for k, v in generate.items()
                 if k not in ("max_new_tokens", "do_sample", "pad_token_id", "suppress_tokens")}
    ids, mask = arguments.pop("input_ids"), arguments.pop("attention_mask")
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    for _ in range(generate["max_new_tokens"]):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **arguments).logits[:, -1].clone()
        logits[:, list(generate.get("suppress_tokens") or [])] = float("-inf")
        token = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        if int(token[0, 0]) in stop:
            break
    return ids


__all__ = ["CHECK_CLASSES", "DOCS", "MODEL_TYPES", "TileGeometry", "call_spans", "check_inputs",
           "check_uncached_tokens", "require_release", "tile_spans"]
