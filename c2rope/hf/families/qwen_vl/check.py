"""`python -m c2rope check MODEL` for the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
Qwen3.5 dense and MoE).

The model is built from its config.json at test size (2 layers, one attention head of
the checkpoint's rotary width, so its M-RoPE sections stay the real ones; with a
partial_rotary_factor the head is as wide as that rotary width needs, and a hybrid
stack such as Qwen3.5's keeps one linear-attention layer before its full-attention
one; a one-block vision tower), with random weights, patched with C2RoPEConfig() unless a config is
given, and compared with the unpatched copy on prompts the processor would write
(vision start / end tokens; Qwen3-VL's timestamp text between video frames), fed with
random pixels and their image_grid_thw / video_grid_thw:
  1. text-only logits equal the unpatched model's;
  2. with an image, the image rows and the text after them change;
  3. with a video, the frame rows and the text after them change;
  4. greedy tokens of the image + video prompt with and without the KV cache match.
`split_line` says which frequency split the patch rotates by.
"""
from __future__ import annotations

import copy
import inspect
from typing import List

import torch

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe")  # this check's (Qwen3.5 included)
# Interleaved M-RoPE sections, and timestamp text between video frames.
_INTERLEAVED = ("qwen3_vl", "qwen3_5", "qwen3_5_moe")
# Hybrid stacks at test size: one linear-attention layer, then one full-attention layer.
_HYBRID_LAYERS = ["linear_attention", "full_attention"]
_HYBRID_SMALL = dict(linear_num_key_heads=1, linear_num_value_heads=1, linear_key_head_dim=16,
                     linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                     shared_expert_intermediate_size=32)
LAYERS = 2
VISION = dict(depth=1, hidden_size=32, intermediate_size=64, embed_dim=32, num_heads=2)
_SPECIAL = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_TEXT = 5  # a plain text token id (below every special id after shrinking)


def _text_config(config):
    return getattr(config, "text_config", None) or config


def mrope_section(config) -> List[int]:
    text = _text_config(config)
    for name in ("rope_parameters", "rope_scaling"):
        parameters = getattr(text, name, None)
        if isinstance(parameters, dict) and parameters.get("mrope_section") is not None:
            return [int(v) for v in parameters["mrope_section"]]
    raise ValueError(f"{config.model_type}: the text config has no mrope_section (rope_parameters / rope_scaling)")


def partial_rotary_factor(config) -> float:
    """The share of each head that is rotated (1.0 unless the config says otherwise)."""
    text = _text_config(config)
    parameters = getattr(text, "rope_parameters", None)
    if isinstance(parameters, dict) and parameters.get("partial_rotary_factor") is not None:
        return float(parameters["partial_rotary_factor"])
    return float(getattr(text, "partial_rotary_factor", None) or 1.0)


def linear_layers(config) -> int:
    """How many text layers are linear attention (Qwen3.5's Gated DeltaNet)."""
    return sum(kind == "linear_attention" for kind in (getattr(_text_config(config), "layer_types", None) or ()))


def shrink_config(config) -> None:
    """In place, after check's generic shrink (which already dropped special ids past the
    small vocabulary): 2 text layers of one head whose rotated part is the checkpoint's
    rotary width (twice the sum of mrope_section), a one-block vision tower projecting
    into it, a small vocabulary with the special tokens moved to its top. A hybrid stack
    keeps one linear-attention layer (small) before its full-attention layer."""
    from ....cli.check_parts import VOCAB

    text = _text_config(config)
    width = 2 * sum(mrope_section(config))
    head_dim = round(width / partial_rotary_factor(config))
    for name, value in dict(num_hidden_layers=LAYERS, hidden_size=width, intermediate_size=2 * width,
                            num_attention_heads=1, num_key_value_heads=1, head_dim=head_dim,
                            vocab_size=VOCAB).items():
        setattr(text, name, value)
    if linear_layers(config):
        text.layer_types = list(_HYBRID_LAYERS)
        for name, value in _HYBRID_SMALL.items():
            if hasattr(text, name):
                setattr(text, name, value)
    vision = config.vision_config
    for name, value in VISION.items():
        if hasattr(vision, name):
            setattr(vision, name, value)
    if hasattr(vision, "out_hidden_size"):
        vision.out_hidden_size = width
    elif config.model_type == "qwen2_vl":
        vision.hidden_size = width  # Qwen2-VL's merger projects to vision_config.hidden_size
    if hasattr(vision, "fullatt_block_indexes"):
        vision.fullatt_block_indexes = [0]
    if hasattr(vision, "deepstack_visual_indexes"):
        vision.deepstack_visual_indexes = [0]
    for offset, name in enumerate(_SPECIAL, start=1):
        for holder in (config, text):
            if getattr(holder, name, None) is not None:
                setattr(holder, name, VOCAB - offset)


def check_lines(config, patch_config=None, options=None) -> List[str]:
    """The report's header line on the checkpoint's config: its frequency split."""
    return [split_line(config, patch_config, options)]


def split_line(config, patch_config=None, options=None) -> str:
    """Which frequency split the patch rotates by, in words."""
    from ....circle import CircleRoPEConfig

    sections = mrope_section(config)
    kind = "interleaved" if config.model_type in _INTERLEAVED else "chunked"
    model = f"the model's M-RoPE sections mrope_section={sections} ({kind})"
    factor, linear = partial_rotary_factor(config), linear_layers(config)
    text = _text_config(config)
    if factor != 1.0:
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        model += (f", rotating {2 * sum(sections)} of {head_dim} head dims (partial_rotary_factor={factor:g}; "
                  "the rest pass through)")
    if linear:
        model += (f", full-attention layers only ({linear} of {text.num_hidden_layers} layers are linear attention, "
                  "left as they are)")
    if isinstance(patch_config, CircleRoPEConfig):
        return f"frequency split: {model}, rotated by Circle-RoPE positions"
    options = dict(options or {})
    frames = " (frame index on the slower half of m's slots)" if options.get("frame_axis") == "separate" else ""
    if options.get("frequencies", "model") == "c2rope":
        from ....config import C2RoPEConfig

        d_t, d_s = (patch_config or C2RoPEConfig()).split(2 * sum(sections))
        return (f"frequency split: c2rope's own (d_temporal={d_t}, d_spatial={d_s}) instead of {model}"
                f"{frames}")
    return f"frequency split: {model}: m on t, y on h, x on w{frames}"


def _ids(config, text: int, image_grid, video_grid):
    """Token ids of a prompt: text, an image, text, a video, text (grids after merging)."""
    merge = config.vision_config.spatial_merge_size
    start, end = config.vision_start_token_id, config.vision_end_token_id
    ids = [_TEXT] * text
    image_rows = None
    if image_grid is not None:
        count = image_grid[1] * image_grid[2] // merge ** 2
        ids += [start]
        image_rows = slice(len(ids), len(ids) + count)
        ids += [config.image_token_id] * count + [end] + [_TEXT] * 3
    video_rows = None
    if video_grid is not None:
        t, h, w = video_grid
        frame = h * w // merge ** 2
        first = len(ids)
        if config.model_type in _INTERLEAVED:  # "<0.5 seconds>" before every frame
            for _ in range(t):
                ids += [_TEXT + 1, _TEXT + 2, start] + [config.video_token_id] * frame + [end]
        else:
            ids += [start] + [config.video_token_id] * (t * frame) + [end]
        video_rows = slice(first, len(ids))
        ids += [_TEXT] * 3
    return torch.tensor([ids]), image_rows, video_rows


def qwen_inputs(model, image: bool = True, video: bool = True):
    """(forward kwargs, image rows, video rows): rows from each vision item to the end."""
    config = model.config
    vision = config.vision_config
    generator = torch.Generator().manual_seed(0)
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    merge = vision.spatial_merge_size
    image_grid = (1, 2 * merge, 3 * merge) if image else None
    video_grid = (2, 2 * merge, 2 * merge) if video else None
    ids, image_rows, video_rows = _ids(config, 4, image_grid, video_grid)
    arguments = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    dtype = next(model.parameters()).dtype
    for grid, pixels, grids in ((image_grid, "pixel_values", "image_grid_thw"),
                                (video_grid, "pixel_values_videos", "video_grid_thw")):
        if grid is not None:
            arguments[grids] = torch.tensor([grid])
            arguments[pixels] = torch.randn(grid[0] * grid[1] * grid[2], patch_dim, generator=generator).to(dtype)
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        arguments["mm_token_type_ids"] = ((ids == config.image_token_id).long()
                                          + 2 * (ids == config.video_token_id).long())
    end = ids.shape[1]
    return (arguments, None if image_rows is None else slice(image_rows.start, end),
            None if video_rows is None else slice(video_rows.start, end))


def describe_inputs(config) -> str:
    """The report's line on the synthetic image and video (grids before merging)."""
    vision = config.vision_config
    merge, patch = vision.spatial_merge_size, vision.patch_size
    t, h, w = (1, 2 * merge, 3 * merge)
    vt, vh, vw = (2, 2 * merge, 2 * merge)
    return (f"synthetic image: image_grid_thw ({t}, {h}, {w}) ({h * patch}x{w * patch} px) -> "
            f"{h * w // merge ** 2} image tokens; synthetic video: video_grid_thw ({vt}, {vh}, {vw}) "
            f"({vt * vision.temporal_patch_size} frames of {vh * patch}x{vw * patch} px) -> "
            f"{vt * vh * vw // merge ** 2} video tokens; random pixels")


def run_check(plan, patch_config=None, options=None, say=print):
    """The CheckResults of a Qwen-VL config (see the module docstring); `plan` is
    c2rope.cli.check_model.prepare's, its config already shrunk by shrink_config."""
    import c2rope

    from ....cli.check_parts import CheckResult, build

    small = plan.config
    model = build(small, plan.model_class)
    say(f"  {describe_inputs(small)}")
    with torch.no_grad():  # larger weights than the init, so positions and masks show in the logits
        for name, parameter in model.named_parameters():
            if "layers" in name and parameter.dim() == 2:
                parameter.normal_(0, 0.3)
    reference = copy.deepcopy(model)
    c2rope.patch_model(model, patch_config if patch_config is not None else c2rope.C2RoPEConfig(),
                       options=options)
    results = []
    text, _, _ = _ids(small, 12, None, None)
    with torch.no_grad():
        diff = (model(input_ids=text).logits - reference(input_ids=text).logits).abs().max().item()
        results.append(CheckResult("text-only logits equal the unpatched model's", diff <= 1e-5,
                                   f"max |diff| = {diff:.2e}"))
        for what, image, video in (("image", True, False), ("video frame", False, True)):
            arguments, image_rows, video_rows = qwen_inputs(model, image, video)
            rows = image_rows if image else video_rows
            got, want = model(**arguments).logits, reference(**arguments).logits
            diff = (got[:, rows] - want[:, rows]).abs().max().item()
            results.append(CheckResult(f"{what} rows change", diff > 1e-4, f"max |diff| = {diff:.2e}"))
    arguments, _, _ = qwen_inputs(model)
    suppress = [getattr(small, name) for name in _SPECIAL if getattr(small, name, None) is not None]
    runs = [model.generate(**arguments, max_new_tokens=4, do_sample=False, use_cache=use_cache,
                           suppress_tokens=suppress, pad_token_id=0) for use_cache in (True, False)]
    results.append(CheckResult("greedy tokens (image + video) with and without the KV cache match",
                               bool(torch.equal(*runs)), f"{runs[0][0, -4:].tolist()} vs {runs[1][0, -4:].tolist()}"))
    return results


__all__ = ["MODEL_TYPES", "check_lines", "describe_inputs", "qwen_inputs", "run_check", "shrink_config", "split_line"]
