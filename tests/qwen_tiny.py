"""Tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models built in code (no downloads) and
prompts with images and videos whose token spans are recorded as they are written, so
tests have positions of an independent origin."""
import random

import torch
import transformers

IMAGE_ID, VIDEO_ID, VISION_START, VISION_END = 60, 61, 62, 63
MERGE, PATCH, TEMPORAL = 2, 2, 2
PIXEL_DIM = 3 * TEMPORAL * PATCH * PATCH
LAYERS = 3
KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
QWEN3_5_KINDS = ("qwen3_5", "qwen3_5_moe")
# Kinds whose processors write timestamp text and vision start / end around every video frame.
TIMESTAMPED = ("qwen3_vl",) + QWEN3_5_KINDS
# Qwen3.5 tiny text stacks: one Gated DeltaNet layer, then one full-attention layer.
QWEN3_5_LAYER_TYPES = ["linear_attention", "full_attention"]
SUPPRESS = [IMAGE_ID, VIDEO_ID, VISION_START, VISION_END]
HAS_QWEN3_5 = hasattr(transformers, "Qwen3_5ForConditionalGeneration")  # 4.57 and 5.0 lack it
# Every kind the installed release can build: the shared Qwen tests run over all of them.
ALL_KINDS = KINDS + (QWEN3_5_KINDS if HAS_QWEN3_5 else ())
# Cached vs uncached: the release's own Gated DeltaNet (Qwen3.5), unpatched and in float64,
# gives up to 1.1e-5 (|out| ~ 8) between one call over 70 tokens and 40 + 30 through its
# cache (its chunked and continued kernels round differently); a wrong position or mask is O(0.1).
LINEAR_CACHE_TOLERANCE = 1e-4


def cache_tolerance(kind):
    """atol of cached vs uncached logits for a kind (float32 generate() logits otherwise)."""
    return LINEAR_CACHE_TOLERANCE if kind in QWEN3_5_KINDS else 1e-6


def _text_config(kind, section=(2, 3, 3)):
    config = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                  num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    section = list(section)  # 8 frequency slots: head_dim 16
    rope = {"rope_type": "default", "rope_theta": 100.0, "mrope_section": section}
    if kind == "qwen3_vl":
        rope["mrope_interleaved"] = True
        config["head_dim"] = 16
    elif kind in QWEN3_5_KINDS:
        # head_dim 64, a quarter of it rotated (16 dims, 8 slots as above), the rest passed through.
        rope.update(mrope_interleaved=True, partial_rotary_factor=0.25)
        config.update(head_dim=64, num_hidden_layers=len(QWEN3_5_LAYER_TYPES), layer_types=QWEN3_5_LAYER_TYPES,
                      linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=8,
                      linear_value_head_dim=8, linear_conv_kernel_dim=4)
        if kind == "qwen3_5_moe":
            config.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                          shared_expert_intermediate_size=16)
    else:
        config.update(bos_token_id=1, eos_token_id=2)
    if transformers.__version__.startswith("4."):
        config["rope_theta"] = 100.0
        config["rope_scaling"] = {"type": "mrope", "mrope_section": section}
    else:
        config["rope_parameters"] = rope
    return config


def make_model(kind, implementation="sdpa", dtype=torch.float64, section=(2, 3, 3)):
    vision = dict(depth=1, num_heads=2, spatial_merge_size=MERGE, patch_size=PATCH, in_channels=3,
                  temporal_patch_size=TEMPORAL)
    ids = dict(image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VISION_START)
    if kind == "qwen2_vl":
        config = transformers.Qwen2VLConfig(text_config=_text_config(kind, section),
                                            vision_config=dict(vision, embed_dim=16, hidden_size=32), **ids)
        model = transformers.Qwen2VLForConditionalGeneration(config)
    elif kind == "qwen2_5_vl":
        config = transformers.Qwen2_5_VLConfig(
            text_config=_text_config(kind, section),
            vision_config=dict(vision, hidden_size=16, intermediate_size=32, out_hidden_size=32, window_size=8,
                               fullatt_block_indexes=[0], tokens_per_second=2), **ids)
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    elif kind in QWEN3_5_KINDS:
        prefix = "Qwen3_5Moe" if kind == "qwen3_5_moe" else "Qwen3_5"
        config = getattr(transformers, f"{prefix}Config")(
            text_config=_text_config(kind, section),
            vision_config=dict(vision, hidden_size=16, intermediate_size=32, out_hidden_size=32,
                               num_position_embeddings=16),
            vision_end_token_id=VISION_END, **ids)
        model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    else:
        config = transformers.Qwen3VLConfig(
            text_config=_text_config(kind, section),
            vision_config=dict(vision, hidden_size=16, intermediate_size=32, out_hidden_size=32,
                               num_position_embeddings=16, deepstack_visual_indexes=[0]),
            vision_end_token_id=VISION_END, **ids)
        model = transformers.Qwen3VLForConditionalGeneration(config)
    # Larger weights than the 0.02 init so attention, and thus positions and masks, matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.normal_(0, 0.3)
    model.set_attn_implementation(implementation)
    if kind == "qwen3_5_moe":
        model.set_experts_implementation("eager")  # grouped_mm has no float64
    return model.to(dtype).eval()


def _words(low=1, high=3):
    return [random.randint(3, 50) for _ in range(random.randint(low, high))]


def make_prompt(kind, batch=2, videos=True, dtype=torch.float64):
    """Left-padded rows of text, images of different sizes and (optionally) videos.

    Returns (model inputs, spans): spans[b] lists (start, h, w) of every image and every
    video frame, in merged tokens, at its place in the padded row."""
    rows, images, clips = [], [], []
    for b in range(batch):
        ids, spans = _words(), []
        for _ in range(random.randint(1, 2)):
            h, w = random.choice([2, 4, 6]), random.choice([2, 4, 6])
            images.append((1, h, w))
            ids.append(VISION_START)
            spans.append((len(ids), h // MERGE, w // MERGE))
            ids += [IMAGE_ID] * (h * w // MERGE**2) + [VISION_END] + _words()
        if videos and (b == 0 or random.random() < 0.5):
            t, h, w = random.choice([2, 3]), random.choice([2, 4]), random.choice([4, 6])
            clips.append((t, h, w))
            if kind not in TIMESTAMPED:
                ids.append(VISION_START)
            for _ in range(t):
                if kind in TIMESTAMPED:  # "<1.5 seconds>" timestamp text, then the frame
                    ids += _words(2, 3) + [VISION_START]
                spans.append((len(ids), h // MERGE, w // MERGE))
                ids += [VIDEO_ID] * (h * w // MERGE**2)
                if kind in TIMESTAMPED:
                    ids.append(VISION_END)
            ids += ([] if kind in TIMESTAMPED else [VISION_END]) + _words()
        rows.append((ids, spans))
    seq = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(batch, seq, dtype=torch.long)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    all_spans = []
    for b, (ids, spans) in enumerate(rows):
        pad = seq - len(ids)
        input_ids[b, pad:] = torch.tensor(ids)
        mask[b, pad:] = 1
        all_spans.append([(start + pad, h, w) for start, h, w in spans])
    types = (input_ids == IMAGE_ID).long() + 2 * (input_ids == VIDEO_ID).long()
    inputs = dict(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=types)
    grid = torch.tensor(images)
    inputs["image_grid_thw"] = grid
    inputs["pixel_values"] = torch.randn(int(grid.prod(-1).sum()), PIXEL_DIM, dtype=dtype)
    if clips:
        grid = torch.tensor(clips)
        inputs["video_grid_thw"] = grid
        inputs["pixel_values_videos"] = torch.randn(int(grid.prod(-1).sum()), PIXEL_DIM, dtype=dtype)
    if transformers.__version__.startswith(("4.", "5.0.")):
        inputs.pop("mm_token_type_ids")  # older releases find vision tokens by their ids
    return inputs, all_spans


def text_prompt():
    """(input_ids, attention_mask): two rows of random text, the first left-padded."""
    ids = torch.randint(3, 50, (2, random.randint(2, 9)))
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    return ids, mask


def attention_layers(text_model):
    """The decoder layers that attend with positions (all of them but Qwen3.5's Gated
    DeltaNet layers, which have no self_attn)."""
    return [layer for layer in text_model.layers if hasattr(layer, "self_attn")]


def age_hooks(text_model, plan, mrope):
    """Pre-hooks that hand the attention layers AGE leaves on M-RoPE (plan[i] False) the
    cos/sin of the model's own M-RoPE positions `mrope`; returns the handles."""
    handles = []
    for layer, use_circle in zip(attention_layers(text_model), plan):
        if not use_circle:
            def hook(module, args, kwargs):
                kwargs["position_embeddings"] = text_model.rotary_emb(args[0], mrope)
                return args, kwargs
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def _per_row(inputs, grid_key, pixel_key, token_id):
    """The grids and pixel rows of `inputs` split by batch row (transformers takes them
    in row order; a run of `token_id` per image, one video per row at most)."""
    grids = inputs.get(grid_key)
    if grids is None:
        return [([], []) for _ in inputs["input_ids"]]
    pixels = list(torch.split(inputs[pixel_key], grids.prod(-1).tolist()))
    rows, at = [], 0
    for ids in inputs["input_ids"]:
        present = (ids == token_id).long()
        count = int(((present[1:] - present[:-1]) == 1).sum()) + int(present[0])
        if token_id == VIDEO_ID:
            count = min(count, 1)  # Qwen3-VL frames are separate runs of one video
        rows.append((grids[at:at + count].tolist(), pixels[at:at + count]))
        at += count
    return rows


def join_turns(first, second):
    """The inputs of a whole conversation, `first` then `second` in every row."""
    joined = {k: torch.cat([first[k], second[k]], dim=1)
              for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in first}
    for grid_key, pixel_key, token_id in (("image_grid_thw", "pixel_values", IMAGE_ID),
                                          ("video_grid_thw", "pixel_values_videos", VIDEO_ID)):
        grids, pixels = [], []
        for (g1, p1), (g2, p2) in zip(_per_row(first, grid_key, pixel_key, token_id),
                                      _per_row(second, grid_key, pixel_key, token_id)):
            grids += g1 + g2
            pixels += p1 + p2
        if grids:
            joined[grid_key] = torch.tensor(grids)
            joined[pixel_key] = torch.cat(pixels)
    return joined
