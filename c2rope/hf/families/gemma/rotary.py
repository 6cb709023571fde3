"""The rotary module of a Gemma text model, per layer type.

Gemma 3 and Gemma 4 build one rotary module that serves two layer types, each with
its own frequencies: `forward(x, position_ids, layer_type)` reads the buffers
`{layer_type}_inv_freq` and `{layer_type}_attention_scaling` (sliding-window layers
use a small rope base, global layers a large one, possibly scaled). c2rope's tables
must follow each type's own frequencies, so the adapter holds one
`C2RotaryEmbedding` per layer type, built on that type's inv_freq and scaling.

Partial rotary (Gemma 4's global layers, rope_type "proportional"): the release pads
inv_freq with zeros for the dims it does not rotate. c2rope splits only the rotated
frequencies between m, x and y and gives the zero-frequency dims cos 1, sin 0, as the
release does; splitting all of them would put x and y on dims that never rotate.

Text-only calls (no image in the call or its cache) get the release's own module,
untouched: text-only logits are the unpatched model's, bit for bit.
"""
from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Dict

import torch
from torch import nn

from ....rotary import C2RotaryEmbedding
from ... import context
from ...pipeline import text_rotary_positions
from ...record import Disarmable

# Rope types whose inv_freq changes during forward: c2rope's tables would freeze them.
_DYNAMIC = ("dynamic", "longrope")


def layer_type_frequencies(rotary: nn.Module) -> Dict[str, SimpleNamespace]:
    """{layer type: (inv_freq, attention_scaling, rope_type)} of a per-layer-type rotary
    module; TypeError when the module is not one (4.57's Gemma 3 has two modules)."""
    names = list(inspect.signature(type(rotary).forward).parameters)
    types = list(getattr(rotary, "layer_types", None) or [])
    if "layer_type" not in names or not types:
        raise TypeError(
            f"c2rope: {type(rotary).__name__} does not take a layer_type (one rotary module per layer type); "
            "c2rope supports Gemma on transformers releases whose text model has one rotary module serving "
            "every layer type (5.0 and later)")
    found = {}
    rope_types = getattr(rotary, "rope_type", {})
    for kind in types:
        inv_freq = getattr(rotary, f"{kind}_inv_freq", None)
        if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1:
            raise TypeError(f"c2rope: {type(rotary).__name__} has no 1-D {kind}_inv_freq buffer")
        rope_type = rope_types.get(kind, "default") if isinstance(rope_types, dict) else "default"
        if any(name in str(rope_type) for name in _DYNAMIC):
            raise TypeError(f"c2rope: Gemma layers of type {kind!r} use rope_type {rope_type!r}, whose frequencies "
                            "change with the sequence length; not supported")
        found[kind] = SimpleNamespace(inv_freq=inv_freq, rope_type=str(rope_type),
                                      attention_scaling=float(getattr(rotary, f"{kind}_attention_scaling", 1.0)))
    return found


class RotatedPrefix(nn.Module):
    """c2rope's tables on the first `rotated` frequencies of a head whose other
    frequencies are zero (pass-through dims: cos 1, sin 0), at the head's full width."""

    def __init__(self, rope: C2RotaryEmbedding, passthrough: int):
        super().__init__()
        self.rope = rope
        self.passthrough = passthrough

    def forward(self, x, position_ids):
        cos, sin = self.rope(x, position_ids)
        half = cos.shape[-1] // 2
        ones = torch.ones(*cos.shape[:-1], self.passthrough, dtype=cos.dtype, device=cos.device)
        zeros = torch.zeros_like(ones)
        cos_half = torch.cat([cos[..., :half], ones], dim=-1)
        sin_half = torch.cat([sin[..., :half], zeros], dim=-1)
        return torch.cat([cos_half, cos_half], dim=-1), torch.cat([sin_half, sin_half], dim=-1)


def build_rope(frequencies: SimpleNamespace, config) -> nn.Module:
    """C2RotaryEmbedding on a layer type's frequencies; on the rotated prefix only when
    the rest are zero (partial rotary)."""
    inv_freq = frequencies.inv_freq
    nonzero = int((inv_freq != 0).sum())
    if 0 < nonzero < inv_freq.numel() and bool((inv_freq[:nonzero] != 0).all()):
        prefix = SimpleNamespace(inv_freq=inv_freq[:nonzero], attention_scaling=frequencies.attention_scaling,
                                 rope_type=frequencies.rope_type)
        return RotatedPrefix(C2RotaryEmbedding.from_hf(prefix, config), inv_freq.numel() - nonzero)
    return C2RotaryEmbedding.from_hf(frequencies, config)


class LayerTypeRotary(Disarmable, nn.Module):
    """Stands in for the text model's `rotary_emb`: the release's module for text-only
    calls, c2rope's triplet tables (on the layer type's own frequencies) for calls that
    hold images. The original module stays a child, so it follows `.to()`."""

    def __init__(self, original: nn.Module, state, config):
        super().__init__()
        self.original = original
        self.state = state
        self.ropes = nn.ModuleDict({kind: build_rope(frequencies, config)
                                    for kind, frequencies in layer_type_frequencies(original).items()})

    def forward(self, x, position_ids, layer_type=None, *args, **kwargs):
        if not self.armed:  # unpatched while something else held on to this module
            return self.original(x, position_ids, layer_type, *args, **kwargs)
        positions = context.current_positions(self.state)
        rope = self.ropes[layer_type]
        if positions is None:
            if self.state.config.text_spatial != "zero":
                return self.original(x, position_ids, layer_type, *args, **kwargs)
            return rope(x, text_rotary_positions(position_ids, self.state))
        tables = rope(x, positions)
        frame = context.current(self.state)
        if frame is not None:
            if not isinstance(frame.tables, dict):
                frame.tables = {}
            frame.tables[layer_type] = tables
        return tables
