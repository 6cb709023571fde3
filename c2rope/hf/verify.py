"""`c2rope.verify(model)`: check, at any time, that c2rope's positions and mask reach
every attention layer on the paths real calls take.

    trainer = SFTTrainer(model=model, ...)      # or peft.get_peft_model, accelerate.prepare
    c2rope.verify(trainer.model)                 # RuntimeError naming the layer and the path

`model` may be the patched model or anything wrapped around it (a PEFT model, an
accelerate / DDP / DeepSpeed wrapper, a torch.compile'd module). For every c2rope patch
inside it, the probe (one row: 2 text tokens, a 2x2 image given as `visual_layout=`, 2
text tokens; no gradients) runs

- through the object given (e.g. PeftModel -> LoraModel -> model.forward, skipping the
  top-level module's call), unless it is the patched model itself,
- through every entry point c2rope hooks, called directly: the top-level model (with
  whatever was wrapped around its forward since: accelerate's autocast, TRL's fused
  head), the inner multimodal model (`model.model(...)`: what TRL's fused LM head and
  other backbone calls run) and the decoder,

and checks that each attention layer received the cos/sin of the probe layout's C2RoPE
positions and c2rope's mask. Then the decoder-level probe of patch time
(`pipeline.verify_patch`) checks that the layers really rotate with c2rope's kernel.
Qwen-VL patches run their own probes (their positions are made by the inner model's
get_rope_index, which every path calls).
"""
from __future__ import annotations

import warnings
from typing import List, Tuple

import torch
from torch import nn

from .checks import AttentionWatch, describe_path

_RECORD_ATTR = "_c2rope_record"


def patched_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if _RECORD_ATTR in vars(m)]


def _outer_call(model: nn.Module, base: nn.Module) -> nn.Module:
    """The module a user-level call enters, below distributed / compile wrappers
    (DDP, DeepSpeed's engine, torch.compile's OptimizedModule: `.module` / `._orig_mod`),
    whose own forward would need every process to join or would compile the probe."""
    current = model
    while current is not base and not callable(getattr(current, "get_base_model", None)):
        inner = next((getattr(current, name) for name in ("_orig_mod", "module")
                      if isinstance(getattr(current, name, None), nn.Module)), None)
        if inner is None:
            break
        current = inner
    return current


def probe_paths(model: nn.Module, base: nn.Module, record) -> List[Tuple[str, nn.Module]]:
    paths = []
    outer = _outer_call(model, base)
    if outer is not base and any(m is base for m in outer.modules()):
        paths.append((f"{type(outer).__name__}(...)", outer))
    for name, module in record.entry_points:
        label = f"{type(base).__name__}(...)" if module is base else f"{name}(...) called directly"
        paths.append((label, module))
    return paths


def probe_ids(decoder: nn.Module, state, device) -> torch.Tensor:
    token = 1 if state.image_token_id != 1 else 2  # text everywhere: the layout places the image
    return torch.full((1, 8), token, dtype=torch.long, device=device)


def verify(model: nn.Module, *, _meta_warns: bool = False) -> None:
    """Raise RuntimeError, naming the layer and the path, if c2rope's positions or mask
    do not reach every attention layer of every c2rope patch in `model` on the paths
    calls take. Returns None when they do. Runs a few 8-token forwards without
    gradients; the model's train/eval mode is kept."""
    from ..layout import VisualLayout
    from ..positions import build_position_ids
    from .pipeline import probe_implementation, verify_patch

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    bases = patched_modules(model)
    if not bases:
        raise RuntimeError(
            f"c2rope.verify: no c2rope patch in {type(model).__name__}: its attention layers get the model's own "
            "positions; call c2rope.patch_model(model) first"
        )
    for base in bases:
        record = vars(base)[_RECORD_ATTR]
        state = record.state
        if callable(record.probe):  # Qwen-VL: the family's own probe
            record.probe(state)
            continue
        decoder, attentions = record.probe
        weight = next(decoder.parameters(), None)
        if weight is None or weight.device.type == "meta":
            if _meta_warns:  # patch_model on a model not materialised yet
                warnings.warn("c2rope: the model has no materialised weights (meta device); the patch was not "
                              "verified by a probe forward", stacklevel=3)
                continue
            raise RuntimeError("c2rope.verify: the model's weights are on the meta device; nothing can be probed")
        ids = probe_ids(decoder, state, weight.device)
        layout = VisualLayout.from_spans([[(2, 2, 2)]], ids.shape[1], device=weight.device)
        expected = build_position_ids(layout, state.config)
        want_mask = state.config.mask != "causal"
        for label, module in probe_paths(model, base, record):
            watch = AttentionWatch(state, attentions, record.delivery).start()
            try:
                with torch.no_grad(), probe_implementation(decoder.config):
                    module(input_ids=ids, attention_mask=torch.ones_like(ids), visual_layout=layout, use_cache=False)
            finally:
                watch.stop()
            reached = next((entry["frame"] for entry in watch.seen if entry is not None), None)
            path = f"{label} [{describe_path(reached)}]" if reached is not None else label
            problem = watch.failure(path, want_mask, expected)
            if problem is not None:
                raise RuntimeError(f"c2rope.verify: {problem}; c2rope would do nothing there")
        verify_patch(decoder, attentions, state)
