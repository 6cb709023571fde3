"""What `python -m c2rope check` needs to know about Gemma (the family contract's
optional `shrink_config` and `check_inputs`)."""
from __future__ import annotations

import torch

# The shrunk test model: one sliding-window layer, then one global layer (as every
# Gemma stack interleaves them), with a window shorter than the synthetic prompt so
# the window is exercised.
CHECK_LAYER_TYPES = ["sliding_attention", "full_attention"]
CHECK_WINDOW = 8


def shrink_config(config) -> None:
    """After the generic shrink (2 layers, small widths): the layer types and window."""
    text = getattr(config, "text_config", None) or config
    text.layer_types = list(CHECK_LAYER_TYPES)[:text.num_hidden_layers]
    text.sliding_window = CHECK_WINDOW


def check_inputs(model, generator: torch.Generator, seq_text: int = 6):
    """(kwargs with one image, kwargs text only, the rows to compare, a description):
    one image of the vision tower's size, its tokens between `seq_text` + `seq_text`
    random text tokens, with the token_type_ids Gemma's processor sends."""
    config = model.config
    state = vars(model)["_c2rope_record"].state
    h, w = state.grid
    vision = config.vision_config
    vocab = config.get_text_config().vocab_size - 2
    before = torch.randint(3, vocab, (1, seq_text), generator=generator)
    after = torch.randint(3, vocab, (1, seq_text), generator=generator)
    image_ids = torch.cat([before, torch.full((1, h * w), state.image_token_id), after], dim=1)
    text_ids = torch.cat([before, after], dim=1)
    size = vision.image_size
    with_image = {"input_ids": image_ids, "attention_mask": torch.ones_like(image_ids),
                  "token_type_ids": (image_ids == state.image_token_id).long(),
                  "pixel_values": torch.randn(1, getattr(vision, "num_channels", 3), size, size, generator=generator)}
    text = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    patches = size // vision.patch_size
    what = (f"synthetic image: {size}x{size} px, {patches}x{patches} patches pooled to a {h}x{w} grid -> {h * w} "
            f"image tokens (id {state.image_token_id}), between {seq_text} + {seq_text} text tokens; layers: "
            f"{', '.join(config.get_text_config().layer_types)} (window {config.get_text_config().sliding_window})")
    return with_image, text, slice(seq_text, seq_text + h * w + seq_text), what
