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
    """After the generic shrink (2 layers, small widths): the layer types and window;
    Gemma 4 also its global heads, per-layer inputs, experts, KV sharing and towers."""
    text = getattr(config, "text_config", None) or config
    text.layer_types = list(CHECK_LAYER_TYPES)[:text.num_hidden_layers]
    text.sliding_window = CHECK_WINDOW
    if config.model_type != "gemma4":
        return
    from ....cli.check_parts import VOCAB

    # the global layers' own head width and kv heads, rebuilt for the 2 layers kept
    text.per_layer_config = {index: {"head_dim": 32, "num_key_value_heads": text.num_key_value_heads}
                             for index, kind in enumerate(text.layer_types) if kind == "full_attention"}
    text.num_kv_shared_layers = 0
    if getattr(text, "hidden_size_per_layer_input", 0):
        text.hidden_size_per_layer_input = 8
    text.vocab_size_per_layer_input = VOCAB
    if getattr(text, "enable_moe_block", False):
        text.num_experts, text.top_k_experts, text.moe_intermediate_size = 4, 2, 32
    vision = getattr(config, "vision_config", None)
    if vision is not None:
        vision.num_key_value_heads = vision.num_attention_heads
        vision.head_dim = vision.hidden_size // vision.num_attention_heads
        vision.position_embedding_size = 256
    config.audio_config = None  # audio tokens are text to c2rope; the tower is not needed
    # the report's header reads one head_dim (the sliding layers'); the model reads each layer's
    text.allow_global_per_layer_attribute_access = True


def check_inputs(model, generator: torch.Generator, seq_text: int = 6):
    if model.config.model_type == "gemma4":
        return _gemma4_inputs(model, generator, seq_text)
    return _gemma3_inputs(model, generator, seq_text)


def _gemma4_inputs(model, generator: torch.Generator, seq_text: int):
    """One 3x4-token image (a non-square grid, as variable resolution gives): 3k x 4k
    patches with their (x, y) coordinates, k the pooling kernel."""
    from .geometry import gemma4_grids

    config = model.config
    vision = config.vision_config
    kernel, patch = int(vision.pooling_kernel_size), int(vision.patch_size)
    rows, cols = 3, 4
    positions = torch.stack(torch.meshgrid(torch.arange(cols * kernel), torch.arange(rows * kernel), indexing="xy"),
                            dim=-1).reshape(1, -1, 2)
    pixels = torch.rand(1, positions.shape[1], 3 * patch * patch, generator=generator)
    assert gemma4_grids(positions, kernel) == [(rows, cols)]
    image_token = config.image_token_id
    vocab = min(config.get_text_config().vocab_size, image_token) - 2
    before = torch.randint(3, vocab, (1, seq_text), generator=generator)
    after = torch.randint(3, vocab, (1, seq_text), generator=generator)
    image_ids = torch.cat([before, torch.full((1, rows * cols), image_token), after], dim=1)
    text_ids = torch.cat([before, after], dim=1)
    with_image = {"input_ids": image_ids, "attention_mask": torch.ones_like(image_ids), "pixel_values": pixels,
                  "image_position_ids": positions, "mm_token_type_ids": (image_ids == image_token).long()}
    text = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    layers = config.get_text_config()
    what = (f"synthetic image: {rows * kernel * patch}x{cols * kernel * patch} px, {rows * kernel}x{cols * kernel} "
            f"patches pooled {kernel}x{kernel} to a {rows}x{cols} grid (image_position_ids) -> {rows * cols} image "
            f"tokens (id {image_token}), between {seq_text} + {seq_text} text tokens; layers: "
            f"{', '.join(layers.layer_types)} (window {layers.sliding_window})")
    return with_image, text, slice(seq_text, seq_text + rows * cols + seq_text), what


def _gemma3_inputs(model, generator: torch.Generator, seq_text: int):
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
