"""C2RoPE's rotary embedding: HF-compatible cos/sin and a fused apply_rotary_pos_emb.

- `C2RotaryEmbedding(dim, base, ...)` is a drop-in for HF's `*RotaryEmbedding`:
  `forward(x, position_ids) -> (cos, sin)` in x.dtype. 2-D integer position_ids give
  plain RoPE, bit-identical to HF; float [B, S, 3] triplets (m, x, y) give C2RoPE.
- `apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1)` has HF's
  signature and routes to one fused kernel for q and k (autograd and torch.compile
  supported, no copies of strided q/k views).
- `rotary_cos_sin(positions, inv_freq, axis, ...)` is the table builder underneath.

Who checks what (docs/design.md §8): the ops (csrc/torch/, the one authority for tensor
shapes, dtypes and devices) refuse bad tensors with a TypeError/ValueError naming the
argument. This module checks only what the ops cannot see: Python argument types,
layouts (unsqueeze_dim, HF's old position_ids indexing), the conversions it makes
(positions to float32) and tensor *values*. Value checks (NaN/Inf positions, the range
of an axis table on an accelerator) need a device sync and a data-dependent branch, so
they run in eager mode on real tensors only: not while torch.compile traces, not on meta.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import C2RoPEConfig

__all__ = ["C2RotaryEmbedding", "apply_rotary_pos_emb", "rotary_cos_sin"]


def _require_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _can_check_values(t: torch.Tensor) -> bool:
    return not torch.compiler.is_compiling() and t.device.type != "meta" and t.numel() > 0


def _positions_as_float32(name: str, positions: torch.Tensor) -> torch.Tensor:
    """Integer or float32/float64 positions as float32 (as HF's `.float()`); float16 and
    bfloat16 cannot hold positions beyond 2048/256 exactly and are refused. Checked for
    NaN/Inf after the cast, so float64 values beyond float32's range are refused too."""
    if positions.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"{name} must be an integer or float32/float64 tensor, got {positions.dtype} "
            "(half precision cannot represent positions exactly)"
        )
    if positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(f"{name} must be an integer or float32/float64 tensor, got {positions.dtype}")
    as_float = positions.float()
    if positions.is_floating_point() and _can_check_values(as_float):
        if not bool(torch.isfinite(as_float).all()):
            raise ValueError(f"{name} contains NaN or Inf (or values beyond float32's range)")
    return as_float


def _axis_table(axis, n_axes: int) -> torch.Tensor:
    """The op's axis table: an integer tensor (its own device), or a list made a CPU
    int64 tensor, which the op accepts with positions on any device and range-checks."""
    if isinstance(axis, torch.Tensor):
        if axis.dtype.is_floating_point or axis.dtype == torch.bool or axis.is_complex():
            raise TypeError(f"axis must hold integers, got {axis.dtype}")
        # The op range-checks CPU tables itself; one on an accelerator would need a sync there.
        if axis.device.type != "cpu" and _can_check_values(axis):
            lo, hi = int(axis.min()), int(axis.max())
            if lo < 0 or hi >= n_axes:
                raise ValueError(f"axis entries must be in [0, {n_axes}), got range [{lo}, {hi}]")
        return axis if axis.dtype in (torch.int32, torch.int64) else axis.long()
    axis = list(axis)
    if not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axis):
        raise TypeError(f"axis must be a sequence of ints, got {axis!r}")
    return torch.tensor(axis, dtype=torch.int64)


def rotary_cos_sin(
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    axis: Union[Sequence[int], torch.Tensor],
    attention_scaling: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """HF-format (cos, sin), each [B, S, 2 * len(inv_freq)], from positions.

    positions: [B, S] (one axis) or [B, S, A]; integer or float32/float64.
    inv_freq: [d/2] frequencies; axis: for each frequency slot, the position component
    it rotates by (0 <= axis[k] < A). Slot k uses angle positions[..., axis[k]] *
    inv_freq[k] (a float32 product, as HF), then cat(angle, angle), cos/sin, times
    attention_scaling, cast to dtype.
    """
    _require_tensor("positions", positions)
    _require_tensor("inv_freq", inv_freq)
    if not isinstance(attention_scaling, numbers.Real) or isinstance(attention_scaling, bool):
        raise TypeError(f"attention_scaling must be a real number, got {attention_scaling!r}")
    if not inv_freq.is_floating_point():
        raise TypeError(f"inv_freq must be a floating tensor, got {inv_freq.dtype}")
    if positions.dim() == 2:
        positions = positions.unsqueeze(-1)
    n_axes = positions.shape[-1] if positions.dim() == 3 else 0
    axis_t = _axis_table(axis, n_axes)
    pos = _positions_as_float32("positions", positions)
    return torch.ops.c2rope.cos_sin(pos, inv_freq.float(), axis_t, float(attention_scaling), dtype)


def _heads_first(q, k, cos, sin, unsqueeze_dim):
    """q, k as [B, H, S, D] views and cos, sin as [B or 1, S, R], for the ops (which check
    them); unsqueeze_dim says whether the heads are dim 1 or 2 of q and k."""
    if isinstance(unsqueeze_dim, bool) or not isinstance(unsqueeze_dim, numbers.Integral):
        raise TypeError(f"unsqueeze_dim must be an int, got {unsqueeze_dim!r}")
    dim = int(unsqueeze_dim) + 4 if unsqueeze_dim < 0 else int(unsqueeze_dim)
    if dim not in (1, 2):
        raise ValueError(
            f"unsqueeze_dim must be 1 ([B, H, S, D]) or 2 ([B, S, H, D]), got {unsqueeze_dim}"
        )
    cos = cos.unsqueeze(0) if cos.dim() == 2 else cos
    sin = sin.unsqueeze(0) if sin.dim() == 2 else sin
    if dim == 2:  # [B, S, H, D] -> [B, H, S, D] views; outputs keep that memory layout
        q = q.transpose(1, 2) if q.dim() == 4 else q
        k = k.transpose(1, 2) if k.dim() == 4 else k
    return q, k, cos, sin, dim


def apply_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: Optional[torch.Tensor] = None,
    unsqueeze_dim: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """HF's apply_rotary_pos_emb, fused: q*cos + rotate_half(q)*sin for q and k at once.

    unsqueeze_dim=1: q [B, Hq, S, D], k [B, Hk, S, D]; unsqueeze_dim=2: q [B, S, Hq, D].
    cos/sin are [B or 1, S, R] (or [S, R]); R < D rotates the first R dims and passes
    the rest through (partial rotary). position_ids is HF's old argument: used only to
    index [max_seq, R] tables; newer HF passes unsqueeze_dim fifth, which is accepted.
    Results have q's and k's dtypes and memory layouts; math is float32 (float64 for
    float64 tensors), rounded once.
    """
    if isinstance(position_ids, numbers.Integral) and not isinstance(position_ids, bool):
        unsqueeze_dim, position_ids = int(position_ids), None  # apply(q, k, cos, sin, 2)
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        _require_tensor(name, t)
    if position_ids is not None:
        _require_tensor("position_ids", position_ids)
        if cos.dim() == 2:  # old HF: tables [max_seq, R] gathered per token
            if position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool:
                raise TypeError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
            cos, sin = cos[position_ids], sin[position_ids]
    q, k, cos, sin, dim = _heads_first(q, k, cos, sin, unsqueeze_dim)
    if q.dtype == k.dtype or q.dim() != 4 or k.dim() != 4:
        q_out, k_out = torch.ops.c2rope.rotary(q, k, cos, sin)
    else:  # one call per dtype; an empty partner skips the other tensor
        q_out, _ = torch.ops.c2rope.rotary(q, q[:, :0], cos, sin)
        _, k_out = torch.ops.c2rope.rotary(k[:, :0], k, cos, sin)
    if dim == 2:
        q_out, k_out = q_out.transpose(1, 2), k_out.transpose(1, 2)
    return q_out, k_out


def apply_rotary_pos_emb_(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> Tuple[torch.Tensor, torch.Tensor]:
    """In-place apply_rotary_pos_emb (q and k of one dtype). Autograd treats it as torch's
    own in-place ops: a leaf that requires grad is refused, a non-leaf gets the rotation's
    gradient, and tensors saved for a backward before it are flagged as modified."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        _require_tensor(name, t)
    qv, kv, cos, sin, _ = _heads_first(q, k, cos, sin, unsqueeze_dim)
    torch.ops.c2rope.rotary_(qv, kv, cos, sin)
    return q, k


def _default_inv_freq(dim: int, base: float) -> torch.Tensor:
    # HF's formula, evaluated on the CPU in float32 like HF's init, so text positions
    # match the model's own rotary embedding bit for bit.
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))


class C2RotaryEmbedding(nn.Module):
    """HF-compatible rotary embedding with C2RoPE's multi-axis positions (docs/design.md §4, §7).

    forward(x, position_ids) -> (cos, sin), each [B, S, dim] in x.dtype:
      - position_ids [B, S] (integer or float): plain RoPE, identical to HF's module;
      - position_ids [B, S, 3] float (m, x, y) from `build_position_ids`: C2RoPE, slot
        k rotating by the component `config.axis_table(dim)[k]`.
    dim: rotary dim (even). d_temporal / d_spatial given here override `config`'s.
    """

    inv_freq: torch.Tensor
    axis: torch.Tensor

    def __init__(
        self,
        dim: int = 128,
        base: float = 10000.0,
        d_temporal: Optional[int] = None,
        d_spatial: Optional[int] = None,
        config: Optional[C2RoPEConfig] = None,
        device: Optional[Union[str, torch.device]] = None,
    ):
        super().__init__()
        if config is None:
            config = C2RoPEConfig()
        elif not isinstance(config, C2RoPEConfig):
            raise TypeError(f"config must be a C2RoPEConfig, got {type(config).__name__}")
        if d_temporal is not None or d_spatial is not None:
            config = dataclasses.replace(config, d_temporal=d_temporal, d_spatial=d_spatial)
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even int, got {dim!r}")
        if not isinstance(base, numbers.Real) or isinstance(base, bool) or not base > 1.0:
            raise ValueError(f"base must be a real number > 1, got {base!r}")
        dim = int(dim)
        axis = config.axis_table(dim)  # validates the split (ValueError)
        self.dim = dim
        self.base = float(base)
        self.config = config
        self.d_temporal, self.d_spatial = config.split(dim)
        self.attention_scaling = 1.0
        self.rope_type = "default"
        self._hf_dynamic = None  # [HF module] for rope types whose inv_freq changes
        self.register_buffer("inv_freq", _default_inv_freq(dim, base).to(device), persistent=False)
        self.register_buffer(
            "axis", torch.tensor(axis, dtype=torch.int32, device=device), persistent=False
        )

    @classmethod
    def from_hf(cls, rotary_module: nn.Module, config: Optional[C2RoPEConfig] = None):
        """Wrap an HF rotary module, keeping its inv_freq and attention_scaling, so any
        rope type (default, linear, llama3, yarn, ...) carries over unchanged.

        For rope types that recompute inv_freq during forward ("dynamic", "longrope"),
        the HF module is kept and asked to update itself on every call (with a one-token
        probe at the largest temporal position), so the frequencies always equal HF's.
        """
        inv_freq = getattr(rotary_module, "inv_freq", None)
        if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1:
            raise TypeError("rotary_module must have a 1-D inv_freq buffer (an HF *RotaryEmbedding)")
        dim = 2 * inv_freq.shape[0]
        self = cls(dim=dim, config=config, device=inv_freq.device)
        self.inv_freq = inv_freq.detach().float().clone()
        self.attention_scaling = float(getattr(rotary_module, "attention_scaling", 1.0))
        rope_type = getattr(rotary_module, "rope_type", "default")
        self.rope_type = rope_type if isinstance(rope_type, str) else "default"
        if "dynamic" in self.rope_type or self.rope_type == "longrope":
            self._hf_dynamic = [rotary_module]  # a list: not registered as a submodule
        return self

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, base={self.base}, d_temporal={self.d_temporal}, "
            f"d_spatial={self.d_spatial}, rope_type={self.rope_type!r}, "
            f"attention_scaling={self.attention_scaling}"
        )

    def _refresh_dynamic(self, x: torch.Tensor, temporal: torch.Tensor) -> None:
        hf = self._hf_dynamic[0]
        probe = temporal.detach().max().reshape(1, 1).to(torch.long)
        hf(x, probe)  # runs HF's own update rule; the [1, 1, dim] output is discarded
        self.inv_freq = hf.inv_freq.detach().float()
        self.attention_scaling = float(hf.attention_scaling)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _require_tensor("x", x)
        _require_tensor("position_ids", position_ids)
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor (its dtype sets the output's), got {x.dtype}")
        if position_ids.device != x.device:  # x never reaches the op: its device is checked here
            raise ValueError(
                f"position_ids is on {position_ids.device} but x is on {x.device}; "
                "all tensors must be on one device"
            )
        if position_ids.dim() == 2:
            axis = torch.zeros_like(self.axis)  # every slot rotates by the one position
        elif position_ids.dim() == 3:
            if position_ids.shape[-1] != 3:
                raise ValueError(
                    f"position_ids must be [B, S] or [B, S, 3] (m, x, y), got shape {tuple(position_ids.shape)}"
                )
            axis = self.axis
        else:
            raise ValueError(
                f"position_ids must be [B, S] or [B, S, 3] (m, x, y), got shape {tuple(position_ids.shape)}"
            )
        pos = _positions_as_float32("position_ids", position_ids)
        if self._hf_dynamic is not None and pos.numel():
            self._refresh_dynamic(x, pos if pos.dim() == 2 else pos[..., 0])
        if pos.dim() == 2:
            pos = pos.unsqueeze(-1)
        # Like HF, follow x's device even if the module was not moved with the model.
        inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float)
        axis = axis.to(x.device)
        return torch.ops.c2rope.cos_sin(pos, inv_freq, axis, float(self.attention_scaling), x.dtype)
