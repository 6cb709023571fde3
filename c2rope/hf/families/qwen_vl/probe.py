"""The patch-time probe of the Qwen-VL patchers (`patch_model(..., verify=True)`).

One tiny forward of the inner Qwen*VLModel (no gradients, no cache, no pixels: the
grids alone place the images, whose placeholder tokens the model then embeds as text)
over text, a 2x2 merged image and, where the model has video tokens, a two-frame video.
Every decoder attention layer's inputs are caught by a pre-hook and compared with what
the probe expects from the spans it wrote itself:
- C2RoPE: the cos table of the C2RoPE positions of those spans, as the patched rotary
  turns them into tables (model sections, c2rope's split, the frame axis), and, unless
  the config's mask is "causal", the Chebyshev mask;
- Circle-RoPE: the cos table of the Circle-RoPE positions (layers AGE keeps on M-RoPE:
  of the model's own get_rope_index positions).
RuntimeError naming the first layer that got something else (patch_model then undoes
the patch). The model's rope_deltas and the last remembered prompt are left as they were.
"""
from __future__ import annotations

import inspect
import warnings
from typing import List, Optional

import torch
from torch import nn

from ....mrope import IMAGE, VIDEO, VisionSpan, c2rope_mrope_position_ids, mrope_position_ids

_PROBE_TOLERANCE = 1e-5  # tables of wrong positions differ by O(1)


def _weight(module: nn.Module) -> Optional[torch.Tensor]:
    weight = next(module.parameters(), None)
    if weight is None or weight.device.type == "meta":
        warnings.warn("c2rope: the model has no materialised weights (meta device); the patch was not "
                      "verified by a probe forward", stacklevel=4)
        return None
    return weight


def probe_prompt(inner: nn.Module, device, video: bool = True):
    """(forward kwargs, spans [[VisionSpan]]) of one row: text, vision start, a 2x2
    merged image, text, and (video and the model has a video token) vision start and a
    video of two 1x2 merged frames, then text."""
    config = inner.config
    merge = int(config.vision_config.spatial_merge_size)
    image, video_id = config.image_token_id, getattr(config, "video_token_id", None)
    start_id = getattr(config, "vision_start_token_id", None)
    special = {image, video_id, start_id, getattr(config, "vision_end_token_id", None)}
    text = next(i for i in range(len(special) + 1) if i not in special)
    opening = [] if start_id is None else [start_id]
    ids = [text] + opening
    spans = [VisionSpan(len(ids), 2, 2)]
    ids += [image] * 4 + [text] + opening
    arguments = {"image_grid_thw": torch.tensor([[1, 2 * merge, 2 * merge]], device=device)}
    if video and video_id is not None:
        spans += [VisionSpan(len(ids), 1, 2, 0, 0), VisionSpan(len(ids) + 2, 1, 2, 0, 1)]
        ids += [video_id] * 4
        arguments["video_grid_thw"] = torch.tensor([[2, merge, 2 * merge]], device=device)
    ids += [text, text]
    input_ids = torch.tensor([ids], device=device)
    arguments.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    if "mm_token_type_ids" in inspect.signature(inner.forward).parameters:
        arguments["mm_token_type_ids"] = (input_ids == image).long() * IMAGE + (input_ids == video_id).long() * VIDEO
    return arguments, [spans]


def token_mixer(layer: nn.Module):
    """(kind, module) of a decoder layer's token mixer: ("attention", self_attn), or
    ("linear", linear_attn) for the linear-attention layers of a hybrid stack (Qwen3.5's
    Gated DeltaNet: no positions, only the model's own padding mask)."""
    for kind, name in (("attention", "self_attn"), ("linear", "linear_attn")):
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return kind, module
    raise TypeError(f"{type(layer).__name__} has neither self_attn nor linear_attn: c2rope cannot tell how it "
                    "attends")


def attention_layers(text: nn.Module) -> List[nn.Module]:
    """The decoder layers that attend with positions (every layer, except the
    linear-attention layers of a hybrid stack)."""
    return [layer for layer in text.layers if token_mixer(layer)[0] == "attention"]


def run_probe(inner: nn.Module, text: nn.Module, arguments: dict) -> List[dict]:
    """Run the inner model once; per decoder layer, its kind ("attention" / "linear",
    `token_mixer`) and the position_embeddings and attention_mask its token mixer got.
    The model's rope_deltas come back as they were."""
    from ...pipeline import probe_implementation

    seen = [{"kind": token_mixer(layer)[0], "calls": 0, "cos": None, "mask": None} for layer in text.layers]

    def catcher(entry):
        def hook(module, args, kwargs):
            entry["calls"] += 1
            embeddings = kwargs.get("position_embeddings")
            entry["cos"] = None if embeddings is None else embeddings[0]
            entry["mask"] = kwargs.get("attention_mask")
        return hook

    handles = [token_mixer(layer)[1].register_forward_pre_hook(catcher(entry), with_kwargs=True)
               for layer, entry in zip(text.layers, seen)]
    deltas = inner.rope_deltas
    try:
        with torch.no_grad(), probe_implementation(text.config):
            inner(**arguments)
    finally:
        for handle in handles:
            handle.remove()
        inner.rope_deltas = deltas
    return seen


def _tables_match(got, want) -> bool:
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    return bool(torch.allclose(got.double(), want.double(), rtol=0, atol=_PROBE_TOLERANCE))


def _name(index: int, text: nn.Module) -> str:
    return f"layer {index} ({type(token_mixer(text.layers[index])[1]).__name__})"


def _check_calls(seen, text) -> None:
    for index, entry in enumerate(seen):
        if entry["calls"] == 0:
            raise RuntimeError(f"c2rope: {_name(index, text)} was never called by the probe forward")
        if entry["kind"] == "attention" and entry["cos"] is None:
            raise RuntimeError(f"c2rope: {_name(index, text)} got no position_embeddings: its rotary is not "
                               "the text model's, so the patch would not reach it")


class C2RoPEProbe:
    """`record.probe` of a C2RoPE-patched Qwen-VL model (c2rope_patch.py)."""

    def __init__(self, qwen):
        self.qwen = qwen

    def __call__(self, state=None) -> None:
        from ...masks import dense_mask
        from ...pipeline import is_expected_mask
        from ...state import C2RoPEState, CallPlan

        qwen = self.qwen
        inner, text = qwen.inner, qwen.text
        weight = _weight(text)
        if weight is None:
            return
        arguments, spans = probe_prompt(inner, weight.device)
        seq = arguments["input_ids"].shape[1]
        last = getattr(qwen._local, "last", None)
        try:
            seen = run_probe(inner, text, arguments)
        finally:
            qwen._local.last = last
        _check_calls(seen, text)
        positions, _ = c2rope_mrope_position_ids(spans, seq, qwen.state.config, device=weight.device)
        x = torch.zeros(1, dtype=weight.dtype, device=weight.device)
        with torch.no_grad(), qwen.chunk_frames(spans):
            want, _ = qwen.rotary_tables(x, positions)
        mask = None
        if qwen.state.config.mask != "causal":
            plan = CallPlan(spans=tuple(tuple(s[:3] for s in row) for row in spans), total_len=seq)
            plan.layout = C2RoPEState._layout(plan.spans, seq, None, weight.device)
            mask = dense_mask(qwen.state, plan, seq, seq)[0, 0]
        for index, entry in enumerate(seen):
            if entry["kind"] != "attention":
                continue  # linear attention takes no positions (families/qwen3_5.py checks it)
            if not _tables_match(entry["cos"], want):
                raise RuntimeError(f"c2rope: {_name(index, text)} did not rotate by c2rope's positions")
            if mask is not None and not is_expected_mask(entry["mask"], None, mask):
                raise RuntimeError(f"c2rope: {_name(index, text)} did not receive c2rope's Chebyshev mask")


class CircleProbe:
    """`record.probe` of a Circle-RoPE-patched Qwen-VL model (circle_patch.py)."""

    def __init__(self, circle, text: nn.Module):
        self.circle = circle
        self.text = text

    def __call__(self, state=None) -> None:
        circle, text = self.circle, self.text
        inner = circle.inner
        weight = _weight(text)
        if weight is None:
            return
        arguments, _ = probe_prompt(inner, weight.device, video=False)
        prompt = circle.prompt
        try:
            seen = run_probe(inner, text, arguments)
        finally:
            circle.prompt = prompt
        _check_calls(seen, text)
        ids = arguments["input_ids"]
        types = (ids == inner.config.image_token_id).long() * IMAGE
        merge = inner.config.vision_config.spatial_merge_size
        positions, _ = mrope_position_ids(ids, arguments["image_grid_thw"], None, None, mm_token_type_ids=types,
                                          spatial_merge_size=merge, circle=circle.config)
        x = torch.zeros(1, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            want = {True: text.rotary_emb(x, positions)[0]}
            if circle.needs_mrope:
                want[False] = text.rotary_emb(x, _model_positions(inner, arguments))[0]
        attending = [(index, entry) for index, entry in enumerate(seen) if entry["kind"] == "attention"]
        for (index, entry), on_circle in zip(attending, circle.plan):
            if not _tables_match(entry["cos"], want[on_circle]):
                what = "Circle-RoPE positions" if on_circle else "the model's own M-RoPE positions (AGE)"
                raise RuntimeError(f"c2rope: {_name(index, text)} did not rotate by {what}")


def _model_positions(inner: nn.Module, arguments: dict) -> torch.Tensor:
    """The unpatched get_rope_index's positions for the probe prompt."""
    original = getattr(inner.get_rope_index, "original", inner.get_rope_index)
    extra = {}
    if "mm_token_type_ids" in inspect.signature(original).parameters:
        extra["mm_token_type_ids"] = (arguments["input_ids"] == inner.config.image_token_id).long() * IMAGE
    positions, _ = original(arguments["input_ids"], image_grid_thw=arguments["image_grid_thw"],
                            attention_mask=arguments["attention_mask"], **extra)
    return positions


__all__ = ["C2RoPEProbe", "CircleProbe", "attention_layers", "probe_prompt", "run_probe", "token_mixer"]
