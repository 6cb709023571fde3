"""Where the images of a Gemma prompt are, and each one's grid of tokens.

Gemma 3: every image becomes `mm_tokens_per_image` tokens, the vision tower's patch
grid average-pooled to `tokens_per_side` x `tokens_per_side` by the projector, row by
row. The grid is the projector's, checked square against mm_tokens_per_image; a run of
image tokens in the input must split into whole grids (VisualLayout.from_input_ids
raises otherwise).
"""
from __future__ import annotations

import inspect
from typing import List, Optional, Tuple

import torch
from torch import nn

from ...encoded import EncodedFeatures, pooled_features
from ...introspect import parameter_names, uses_global
from ...pipeline import ROTARY_GLOBAL, to_kwargs
from ...record import Unpicklable
from ...state import default_image_token_id


def gemma3_grid(model: nn.Module):
    """(side, side) of Gemma 3's pooled image grid; TypeError if it is not square."""
    config = model.config
    tokens = int(config.mm_tokens_per_image)
    projector = getattr(getattr(model, "model", model), "multi_modal_projector", None)
    side = int(getattr(projector, "tokens_per_side", round(tokens ** 0.5)))
    if side * side != tokens:
        raise TypeError(f"c2rope: Gemma 3 mm_tokens_per_image={tokens} is not the square of the projector's "
                        f"tokens_per_side={side}; the image grid is unknown")
    vision = config.vision_config
    patches = int(vision.image_size) // int(vision.patch_size)
    if patches % side:
        raise TypeError(f"c2rope: Gemma 3's {patches}x{patches} patches do not pool evenly to {side}x{side}")
    return side, side


def setup(model: nn.Module, inner: nn.Module, state, record=None):
    """Fill in state.image_token_id and state.grid; return the `inner_spans` callback
    for entry.add_entry_points (None: spans are found from the image-token runs)."""
    config = model.config
    default_image_token_id(state, config)
    if config.model_type == "gemma3":
        if state.grid is None:
            state.grid = gemma3_grid(model)
        return None
    if config.model_type == "gemma4":
        kernel = int(config.vision_config.pooling_kernel_size)
        if record is not None and callable(getattr(inner, "get_image_features", None)):
            record.wrap_forward(inner, encode_images, kernel, parameter_names(inner.get_image_features),
                                attribute="get_image_features")
        return Gemma4Spans(state.image_token_id, getattr(config, "video_token_id", None), kernel)
    raise TypeError(f"c2rope: no image geometry for model_type {config.model_type!r}")


def gemma4_grids(image_position_ids: torch.Tensor, kernel: int) -> List[Tuple[int, int]]:
    """(rows, columns) of pooled tokens of each image, from its patch coordinates."""
    if not isinstance(image_position_ids, torch.Tensor) or image_position_ids.dim() != 3 \
            or image_position_ids.shape[-1] != 2:
        raise ValueError("c2rope: Gemma 4 image_position_ids must be [images, patches, 2] (x, y; -1 for padding), got "
                         f"{getattr(image_position_ids, 'shape', type(image_position_ids).__name__)}")
    grids = []
    for index, positions in enumerate(image_position_ids.detach().cpu()):
        real = positions[(positions >= 0).all(dim=-1)]
        if real.numel() == 0:
            raise ValueError(f"c2rope: Gemma 4 image {index} has no patch in image_position_ids")
        width, height = int(real[:, 0].max()) + 1, int(real[:, 1].max()) + 1
        if width % kernel or height % kernel or real.shape[0] != width * height:
            raise ValueError(f"c2rope: Gemma 4 image {index}: its patches ({real.shape[0]}, spanning {height}x{width}) "
                             f"do not fill a grid of whole {kernel}x{kernel} pooling cells")
        grids.append((height // kernel, width // kernel))
    return grids


# Image features computed before the forward call (5.24+ generate() encodes the images
# once, then passes `mm_encoder_outputs` without image_position_ids): the grid of every
# feature tensor, noted when get_image_features made it.
_ENCODED = EncodedFeatures()


def encode_images(original, kernel: int, names, *args, **kwargs):
    """The model's get_image_features, noting the grid of every image it encodes."""
    arguments = to_kwargs(names, args, kwargs)
    positions = arguments.get("image_position_ids")
    out = original(*args, **kwargs)
    features = getattr(out, "pooler_output", None)
    if positions is not None and isinstance(features, (list, tuple)):
        grids = gemma4_grids(positions, kernel)
        if len(grids) == len(features):
            _ENCODED.remember(features, grids)
    return out


def encoded_grids(mm_encoder_outputs) -> Optional[List[Tuple[int, int]]]:
    """The grids of pre-encoded images, or None when there are none."""
    features = pooled_features(mm_encoder_outputs, "image")
    if features is None:
        return None
    return _ENCODED.recall(features, lambda index: f"c2rope: image {index} of mm_encoder_outputs was not encoded "
                           "by this patched model's get_image_features, so its grid is unknown; pass pixel_values "
                           "with image_position_ids (or visual_layout=)")


class Gemma4Spans(Unpicklable):
    """The entry hook's `spans(names, args, kwargs)`: each image's grid from its
    image_position_ids, placed on the image-token runs of input_ids. Video is refused
    (its frames would keep 1-D positions under c2rope's mask); audio tokens are text."""

    def __init__(self, image_token_id: int, video_token_id, kernel: int):
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.kernel = kernel

    def __call__(self, names, args, kwargs):
        arguments = to_kwargs(names, args, kwargs)
        ids = arguments.get("input_ids")
        if arguments.get("pixel_values_videos") is not None or (
                isinstance(ids, torch.Tensor) and self.video_token_id is not None
                and bool((ids == self.video_token_id).any())):
            raise ValueError("c2rope: Gemma 4 video is not supported (only images get c2rope's grids); "
                             "docs/gemma.md, 'Gemma 4'")
        if not isinstance(ids, torch.Tensor):
            if arguments.get("pixel_values") is not None:
                raise ValueError("c2rope: Gemma 4 images given with inputs_embeds: c2rope finds them in input_ids; "
                                 "pass input_ids, or visual_layout=c2rope.VisualLayout.from_spans(...)")
            return None
        if not bool((ids == self.image_token_id).any()):
            return None
        positions = arguments.get("image_position_ids")
        grids = gemma4_grids(positions, self.kernel) if positions is not None else encoded_grids(
            arguments.get("mm_encoder_outputs"))
        if grids is None:
            raise ValueError("c2rope: input_ids hold Gemma 4 image tokens but no image_position_ids were given: "
                             "each image's grid is read from them (pass the processor's image_position_ids, or "
                             "visual_layout=)")
        from ....layout import VisualLayout

        mask = arguments.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        return VisualLayout.from_input_ids(ids, self.image_token_id, grids, attention_mask=mask).spans


def calls_pair_rotary(attention: nn.Module) -> bool:
    """Whether the layer calls apply_rotary_pos_emb(q, k, cos, sin) (Gemma 3), rather
    than a one-tensor apply_rotary_pos_emb(x, cos, sin) (Gemma 4). The probe checks
    that every rebound layer really calls c2rope's kernel."""
    if not uses_global(type(attention).forward, ROTARY_GLOBAL):
        return False
    function = inspect.unwrap(type(attention).forward).__globals__.get(ROTARY_GLOBAL)
    try:  # a hub-kernel wrapper (5.x) shows (*args, **kwargs): read as the pair form
        names = list(inspect.signature(inspect.unwrap(function)).parameters)
    except (TypeError, ValueError):
        return False
    return names[:1] != ["x"]
