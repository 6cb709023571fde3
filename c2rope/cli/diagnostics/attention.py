"""Pure positional attention: the scores that the rotary encoding alone induces.

With HF's rotate-half layout, dims k and k + d/2 form a pair that the rotation turns by
angle[k]; as a complex number z = x[k] + i x[k + d/2] it is multiplied by exp(i angle).
So for a query vector q at position p_i and a key vector k at p_j

    <R(p_i) q, R(p_j) k> = Re sum_k  zq[k] conj(zk[k]) exp(i angle_i[k]) exp(-i angle_j[k]),

one complex matrix product over all (i, j) at once. The phases exp(i angle) come from
c2rope.rotary_cos_sin, the table builder the models use (float32 angles as in HF, cos/sin
returned in float64), so what is measured is what the package computes.

Content is taken out of the picture by using the *same* random direction for q and k in
each draw ("shared", default): the score is then a function of the positions only and
every scheme is compared on identical content. With independent q and k ("independent")
the expected score is 0 at every distance and the draw average hides the positional
pattern; it is offered to show that. Vectors have norm sqrt(d) ("rms": unit RMS per
component, as after an RMSNorm) or 1 ("unit": scores within +-1/sqrt(d), so softmax is
nearly uniform whatever the scheme).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from c2rope.rotary import rotary_cos_sin

__all__ = ["default_inv_freq", "phase_table", "qk_weights", "weights_from_qk", "positional_scores", "positional_attention"]

QK_MODES = ("shared", "independent")
NORMS = ("rms", "unit")


def default_inv_freq(dim: int, base: float = 10000.0) -> torch.Tensor:
    """HF's default inverse frequencies, float32 [dim // 2]."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))


def phase_table(positions: torch.Tensor, inv_freq: torch.Tensor, axis: Sequence[int]) -> torch.Tensor:
    """exp(i angle) per token and frequency slot, complex128 [S, d/2], for positions [S, A]."""
    cos, sin = rotary_cos_sin(positions.unsqueeze(0), inv_freq, axis, dtype=torch.float64)
    half = inv_freq.shape[0]
    return torch.complex(cos[0, :, :half], sin[0, :, :half])


def qk_weights(draws: int, dim: int, generator: Optional[torch.Generator] = None, qk: str = "shared",
               norm: str = "rms") -> torch.Tensor:
    """zq * conj(zk) per draw and slot, complex128 [draws, d/2], for random q, k."""
    if qk not in QK_MODES:
        raise ValueError(f"qk must be one of {QK_MODES}, got {qk!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    length = math.sqrt(dim) if norm == "rms" else 1.0

    def draw():
        v = torch.randn(draws, dim, dtype=torch.float64, generator=generator)
        return v / v.norm(dim=-1, keepdim=True) * length

    q = draw()
    return weights_from_qk(q, q if qk == "shared" else draw())


def weights_from_qk(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """zq * conj(zk), complex128 [draws, d/2], of real q, k [draws, d] (rotate-half pairs)."""
    half = q.shape[-1] // 2
    q, k = q.double(), k.double()
    zq = torch.complex(q[:, :half], q[:, half:])
    zk = torch.complex(k[:, :half], k[:, half:])
    return zq * zk.conj()


def positional_scores(phase: torch.Tensor, weights: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """<R(p_i) q, R(p_j) k> / sqrt(d) for the query rows `queries` (index tensor) against
    every key: float64 [draws, Q, S]."""
    dim = 2 * phase.shape[1]
    lhs = weights.unsqueeze(1) * phase[queries].unsqueeze(0)  # [D, Q, d/2]
    return torch.matmul(lhs, phase.conj().T).real / math.sqrt(dim)


def positional_attention(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over allowed keys for every draw, averaged over draws: float64 [Q, S].
    Every query row must allow at least one key (both masks let a token see itself)."""
    masked = scores.masked_fill(~allowed.unsqueeze(0), float("-inf"))
    return torch.softmax(masked, dim=-1).mean(dim=0)
