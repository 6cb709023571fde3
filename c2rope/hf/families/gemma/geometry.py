"""Where the images of a Gemma prompt are, and each one's grid of tokens.

Gemma 3: every image becomes `mm_tokens_per_image` tokens, the vision tower's patch
grid average-pooled to `tokens_per_side` x `tokens_per_side` by the projector, row by
row. The grid is the projector's, checked square against mm_tokens_per_image; a run of
image tokens in the input must split into whole grids (VisualLayout.from_input_ids
raises otherwise).
"""
from __future__ import annotations

import inspect

from torch import nn

from ...introspect import uses_global
from ...pipeline import ROTARY_GLOBAL


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


def setup(model: nn.Module, inner: nn.Module, state):
    """Fill in state.image_token_id and state.grid; return the `inner_spans` callback
    for entry.add_entry_points (None: spans are found from the image-token runs)."""
    config = model.config
    if state.image_token_id is None:
        state.image_token_id = getattr(config, "image_token_id", None)
        if state.image_token_id is None:
            state.image_token_id = getattr(config, "image_token_index", None)
    if config.model_type == "gemma3":
        if state.grid is None:
            state.grid = gemma3_grid(model)
        return None
    raise TypeError(f"c2rope: no image geometry for model_type {config.model_type!r}")


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
