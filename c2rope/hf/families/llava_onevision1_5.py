"""LLaVA-OneVision-1.5 (transformers' `llava_onevision1_5`, from 5.25; docs/tiles.md):

    c2rope.patch_model(model, c2rope.C2RoPEConfig())

Its language model is Qwen3 with plain 1-D RoPE: the top-level model borrows Qwen2.5-VL's
shape (`image_grid_thw`, `<|vision_start|>` / `<|vision_end|>` around each image) but
not its M-RoPE: the inner model hands the text model `arange` positions and generate()
keeps the default 1-D ones. (The patcher refuses a text config that names M-RoPE
sections.) The vision tower (RICE-ViT) sees every image at its own resolution, cut
into `patch_size` patches, and merges `spatial_merge_size x spatial_merge_size` patches
into one token: an image whose `image_grid_thw` row is (1, H, W) is one grid of
`H/m x W/m` tokens in raster order; a video row (T, H, W) is T such frames, one after
the other.

c2rope gives every image and every video frame its own grid (centre, rings, Chebyshev
mask); `<|vision_start|>`, `<|vision_end|>` and everything else is text. The grids come
from `image_grid_thw` / `video_grid_thw` of the call and are checked against the image
and video tokens the input holds (ValueError naming the image whose tokens do not fit).
generate() from 5.24 encodes the images once and passes `mm_encoder_outputs` without
the grids: the patched `get_image_features` / `get_video_features` remember the grid of
every feature tensor they make, so those calls are placed too.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .llava_next.anyres import ImageTokens, merge_rows, placeholder_spans
from ..encoded import EncodedFeatures
from .. import introspect
from ..introspect import parameter_names
from .llama import find_decoder, patch_decoder
from ..pipeline import to_kwargs
from ..record import PatchRecord, Unpicklable
from ..state import default_image_token_id, refuse_grid
from ..registry import register_patcher

MODEL_TYPES = ("llava_onevision1_5",)
CHECK_CLASSES = {"llava_onevision1_5": "LlavaOnevision15ForConditionalGeneration"}
DOCS = "docs/tiles.md"
# (modality, the forward's grid argument, the encoder method, placeholder-id attribute)
_MODALITIES = (("image", "image_grid_thw", "get_image_features", "image_token_id"),
               ("video", "video_grid_thw", "get_video_features", "video_token_id"))


def require_release(model_type: str) -> None:
    """TypeError unless the installed transformers ships LLaVA-OneVision-1.5 (5.25 on)."""
    introspect.require_release(model_type, "LLaVA-OneVision-1.5", DOCS)


def merged_grids(grid_thw, merge: int, what: str) -> List[ImageTokens]:
    """Per row (T, H, W) of `what` (image_grid_thw / video_grid_thw): T grids of
    H/merge x W/merge tokens."""
    if not isinstance(grid_thw, torch.Tensor) or grid_thw.dim() != 2 or grid_thw.shape[1] != 3 or \
            grid_thw.is_floating_point():
        raise ValueError(f"c2rope: {what} must be an integer tensor [n, 3] (frames, height, width in patches), got "
                         f"{getattr(grid_thw, 'shape', type(grid_thw).__name__)}")
    items = []
    for index, (t, h, w) in enumerate(grid_thw.tolist()):
        if t < 1 or h < 1 or w < 1 or h % merge or w % merge:
            raise ValueError(f"c2rope: {what}[{index}] = ({t}, {h}, {w}): frames must be >= 1 and height and width "
                             f"positive multiples of vision_config.spatial_merge_size {merge}")
        items.append(ImageTokens(((h // merge, w // merge),) * t))
    return items


class EncodedGrids(EncodedFeatures):
    """The grids of every feature tensor the patched encoder made (generate() passes
    them back as mm_encoder_outputs, repeated by reference for beams)."""

    def recall_grids(self, features, what: str) -> List[ImageTokens]:
        return self.recall(features, lambda index: f"c2rope: {what} {index} of mm_encoder_outputs was not encoded by "
                           f"this patched model, so its grid is unknown; pass {what}_grid_thw (or visual_layout=)")


def encode(original, grids: EncodedGrids, merge: int, grid_name: str, names, *args, **kwargs):
    """get_image_features / get_video_features, remembering each output tensor's grid."""
    out = original(*args, **kwargs)
    grid_thw = to_kwargs(names, args, kwargs).get(grid_name)
    features = getattr(out, "pooler_output", None)
    if isinstance(grid_thw, torch.Tensor) and isinstance(features, (list, tuple)) and \
            len(features) == grid_thw.shape[0]:
        grids.remember(features, merged_grids(grid_thw, merge, grid_name))
    return out


class MergedSpans(Unpicklable):
    """The inner model's entry hook `spans(names, args, kwargs)`: the grids of every
    image and video frame of the call, placed on their placeholder tokens."""

    def __init__(self, config, merge: int, grids: EncodedGrids):
        self.token_ids = {modality: getattr(config, attribute) for modality, _, _, attribute in _MODALITIES}
        self.merge = merge
        self.grids = grids

    def __call__(self, names, args, kwargs):
        arguments = to_kwargs(names, args, kwargs)
        ids = arguments.get("input_ids")
        encoded = arguments.get("mm_encoder_outputs") or {}
        if ids is None:
            if any(arguments.get(name) is not None for name in ("pixel_values", "pixel_values_videos")) or encoded:
                raise ValueError("c2rope: LLaVA-OneVision-1.5 images given with inputs_embeds: c2rope finds them in "
                                 "input_ids; pass input_ids, or the layout as visual_layout=")
            return None
        parts = []
        for modality, grid_name, _, _ in _MODALITIES:
            token = self.token_ids[modality]
            if token is None or not bool((ids == token).any()):
                continue
            grid_thw = arguments.get(grid_name)
            features = getattr(encoded.get(modality), "pooler_output", None)
            if grid_thw is not None:
                items = merged_grids(grid_thw, self.merge, grid_name)
            elif features is not None:
                items = self.grids.recall_grids(features, modality)
            else:
                raise ValueError(f"c2rope: input_ids hold {modality} tokens but no {grid_name} was given; every "
                                 f"{modality}'s grid follows from it (or pass visual_layout=)")
            parts.append(placeholder_spans(ids, token, items, modality))
        return merge_rows(*parts) if parts else tuple(() for _ in range(ids.shape[0]))


def _refuse_mrope(model: nn.Module) -> None:
    text = find_decoder(model).config
    parameters = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if isinstance(parameters, dict) and parameters.get("mrope_section") is not None:
        raise TypeError("c2rope: this LLaVA-OneVision-1.5 text config names M-RoPE sections (mrope_section); the "
                        "family is patched as a 1-D RoPE language model (docs/tiles.md)")


@register_patcher(*MODEL_TYPES)
def _patch_llava_onevision1_5(model: nn.Module, record: PatchRecord, state) -> None:
    require_release(model.config.model_type)
    config = model.config
    refuse_grid(state, "LLaVA-OneVision-1.5", "every image's grid from image_grid_thw / video_grid_thw")
    default_image_token_id(state, config)
    _refuse_mrope(model)
    merge = int(config.vision_config.spatial_merge_size)
    grids = EncodedGrids()
    encoder = model.model if callable(getattr(getattr(model, "model", None), "get_image_features", None)) else model
    for _, grid_name, method, _ in _MODALITIES:
        if callable(getattr(encoder, method, None)):
            record.wrap_forward(encoder, encode, grids, merge, grid_name, parameter_names(getattr(encoder, method)),
                                attribute=method)
    patch_decoder(model, record, state, inner_spans=MergedSpans(config, merge, grids))


def check_inputs(model, generator: torch.Generator):
    """`python -m c2rope check`: one image of 8 x 12 patches (a 4 x 6 token grid after
    the 2 x 2 merge) between vision_start / vision_end-like text tokens."""
    from ...cli.check_parts import VOCAB

    config = model.config
    vision = config.vision_config
    merge = int(vision.spatial_merge_size)
    rows, cols = 4 * merge, 6 * merge
    grid_thw = torch.tensor([[1, rows, cols]])
    tokens = rows * cols // merge ** 2
    channels = getattr(vision, "in_channels", 3)
    pixels = torch.randn(rows * cols, channels * vision.patch_size ** 2, generator=generator)
    text_ids = torch.randint(3, VOCAB - 2, (1, 12), generator=generator)
    ids = torch.cat([text_ids[:, :6], torch.full((1, tokens), config.image_token_id), text_ids[:, 6:]], dim=1)
    with_image = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
                  "image_grid_thw": grid_thw}
    text = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    what = (f"synthetic image: {rows}x{cols} patches of {vision.patch_size} px (image_grid_thw), merged "
            f"{merge}x{merge} -> a {rows // merge}x{cols // merge} grid of {tokens} image tokens (id "
            f"{config.image_token_id}), between 6 + 6 text tokens")
    return with_image, text, slice(6, 6 + tokens + 6), what


def shrink_config(config) -> None:
    """After the generic shrink: the vision tower projects into the shrunk text width."""
    text = config.text_config
    config.vision_config.out_hidden_size = text.hidden_size
    for name in ("video_token_id", "vision_start_token_id", "vision_end_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= text.vocab_size:
            setattr(config, name, text.vocab_size - {"video_token_id": 2, "vision_start_token_id": 3,
                                                     "vision_end_token_id": 4}[name])


__all__ = ["CHECK_CLASSES", "DOCS", "MODEL_TYPES", "MergedSpans", "check_inputs", "merged_grids", "require_release",
           "shrink_config"]
