"""The rotary the plugin puts into every attention layer of the served text model.

vLLM's MRotaryEmbedding looks cos/sin up in a table indexed by integer positions; this
one computes them from the float32 positions `positions.decode_positions` recovers, as
transformers' rotary does (cos(p * inv_freq) in float32, then the attention dtype), with
each frequency slot rotated by the position row its axis table names: the model's
M-RoPE sections (t, h, w; chunked or interleaved, `model_rows`) or c2rope's split. The
rotation itself is vLLM's own (`apply_rotary_emb.forward_native` of the original module).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .positions import decode_positions


def model_rows(original: nn.Module) -> list:
    """Which row (t, h, w) = (0, 1, 2) each frequency slot of vLLM's M-RoPE rotary
    rotates by, read from the rotary itself: position 1 on one row and 0 on the others
    turns exactly that row's slots. So chunked sections (Qwen2/2.5-VL) and interleaved
    ones (Qwen3-VL: t h w t h w ... with t filling the tail) come out as vLLM computes
    them, and transformers' patched tables read theirs the same way (tables.model_row_table)."""
    half, rotary_dim = original.rotary_dim // 2, original.rotary_dim
    device = original.cos_sin_cache.device
    query = torch.zeros(1, original.head_size, dtype=torch.float32, device=device)
    query[:, :rotary_dim] = 1.0
    # Slot k is dims (k, k + half) in the NeoX layout, (2k, 2k + 1) in the GPT-J one.
    first_dim = torch.arange(half) if original.is_neox_style else 2 * torch.arange(half)
    rows = [None] * half
    # As many rows as vLLM's buffer has (a 4th, empty section for the frame axis: frames.py).
    count = max(3, len(original.mrope_section))
    for row in range(3):
        positions = torch.zeros(count, 1, dtype=torch.int64, device=device)
        positions[row] = 1
        with torch.no_grad():
            turned, _ = type(original).forward_native(original, positions, query.clone(), query.clone())
        for slot in (turned[0, first_dim.to(device)] != 1.0).nonzero().flatten().tolist():
            if rows[slot] is not None:
                raise ValueError(f"c2rope.vllm: frequency slot {slot} of {type(original).__name__} turns by rows "
                                 f"{rows[slot]} and {row}")
            rows[slot] = row
    if any(row is None for row in rows):
        raise ValueError(f"c2rope.vllm: could not tell which M-RoPE row turns each frequency slot of "
                         f"{type(original).__name__} (mrope_section={original.mrope_section})")
    return rows


def c2rope_rows(config, rotary_dim: int) -> list:
    """c2rope's split (`C2RoPEConfig.axis_table`) in rows: m on t, y on h, x on w."""
    from ..config import AXIS_M, AXIS_X, AXIS_Y

    row_of_axis = {AXIS_M: 0, AXIS_Y: 1, AXIS_X: 2}
    return [row_of_axis[axis] for axis in config.axis_table(rotary_dim)]


class C2RoPEMRotary(nn.Module):
    """Drop-in for a vLLM MRotaryEmbedding: forward(positions, query, key) -> (query, key)."""

    def __init__(self, original: nn.Module, slot_rows: Sequence[int], linear_factor: float = 1.0):
        """linear_factor: the original's linear rope scaling (vLLM's LinearScalingRotaryEmbedding
        divides positions by it; transformers divides inv_freq by it, which is what this does)."""
        super().__init__()
        if getattr(original, "scaling_factor", None) is not None:
            raise ValueError("c2rope.vllm serves rotaries without YaRN scaling only; this model's rotary has "
                             f"scaling_factor={original.scaling_factor}")
        if len(slot_rows) != original.rotary_dim // 2:
            raise ValueError(f"slot_rows must name a row for each of the {original.rotary_dim // 2} frequency "
                             f"slots, got {len(slot_rows)}")
        # Not a submodule: one original is shared by every layer (vLLM caches rotaries).
        self.__dict__["original"] = original
        self.head_size, self.rotary_dim = original.head_size, original.rotary_dim
        inv_freq = original._compute_inv_freq(original.base).to(torch.float32)
        self.register_buffer("inv_freq", inv_freq / linear_factor, persistent=False)  # x / 1.0 is x exactly
        self.register_buffer("slot_rows", torch.tensor(list(slot_rows), dtype=torch.int64), persistent=False)

    def cos_sin(self, positions: torch.Tensor):
        """cos, sin float32 [num_tokens, rotary_dim / 2] for int64 positions [rows, num_tokens]
        (3 rows, or 4 with the frame axis)."""
        values = decode_positions(positions)  # float32 [rows, N]
        per_slot = values.index_select(0, self.slot_rows.to(values.device)).t()  # [N, slots]
        freqs = per_slot * self.inv_freq.to(values.device)
        return freqs.cos(), freqs.sin()

    def forward(self, positions, query, key=None, offsets=None):
        if positions.ndim != 2 or offsets is not None:
            return self.original(positions, query, key, offsets) if offsets is not None else \
                self.original(positions, query, key)
        cos, sin = self.cos_sin(positions)
        cos, sin = cos.to(query.dtype), sin.to(query.dtype)
        num_tokens = positions.shape[-1]
        rotate = self.original.apply_rotary_emb.forward_native
        out = []
        # key None: a KV-shared layer (Gemma 4) rotates its queries only, its keys are cached.
        for x in (query, key):
            if x is None:
                out.append(None)
                continue
            shape = x.shape
            x = x.view(num_tokens, -1, self.head_size)
            turned = rotate(x[..., :self.rotary_dim], cos, sin)
            out.append(torch.cat((turned, x[..., self.rotary_dim:]), dim=-1).reshape(shape))
        return out[0], out[1]


__all__ = ["C2RoPEMRotary", "c2rope_rows", "model_rows"]
