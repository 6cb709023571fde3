"""The positional schemes the diagnostics compare, each as (positions, axis table, mask).

Every scheme turns a Prompt into positions [S, A] (float32), says which position axis
each rotary frequency slot turns by (the `axis` argument of c2rope.rotary_cos_sin), and
which keys each query may see. Positions come from the library itself (C2RoPE from
build_position_ids, M-RoPE and Circle-RoPE from c2rope.mrope.mrope_position_ids), so the
diagnostics measure what the package computes.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch

from c2rope.circle import CircleRoPEConfig
from c2rope.config import C2RoPEConfig
from c2rope.layout import VisualLayout
from c2rope.mask import chebyshev_mask
from c2rope.mrope import mrope_axis_table, mrope_position_ids
from c2rope.positions import build_position_ids

from .prompt import Prompt

__all__ = ["Scheme", "default_schemes", "scheme_by_key", "c2rope_scheme", "SCHEME_KEYS", "mrope_sections"]


def mrope_sections(dim: int) -> List[int]:
    """Qwen2-VL's (t, h, w) split of the dim // 2 slots: a quarter to t, the rest shared
    by h and w ([16, 24, 24] for dim 128, the released models' value)."""
    half = dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


@dataclasses.dataclass(frozen=True)
class Scheme:
    """One positional scheme. family: "rope1d", "c2rope", "mrope" or "circle"."""

    key: str
    name: str
    family: str
    c2rope_config: Optional[C2RoPEConfig] = None
    circle_config: Optional[CircleRoPEConfig] = None

    @property
    def mask_name(self) -> str:
        if self.family == "c2rope" and self.c2rope_config.mask != "causal":
            return f"Chebyshev ({self.c2rope_config.mask})"
        return "causal"

    def _layout(self, prompt: Prompt) -> VisualLayout:
        return VisualLayout.from_spans([prompt.spans], prompt.seq_len)

    def positions(self, prompt: Prompt) -> torch.Tensor:
        """float32 [S, A]: A = 1 for 1D RoPE, 3 otherwise ((m, x, y) or (t, h, w))."""
        seq = prompt.seq_len
        if self.family == "rope1d":
            return torch.arange(seq, dtype=torch.float32).unsqueeze(-1)
        if self.family == "c2rope":
            return build_position_ids(self._layout(prompt), self.c2rope_config)[0]
        types = prompt.is_image.to(torch.int64).unsqueeze(0)
        grids = [[1, h, w] for _, h, w in prompt.spans] or None
        pos, _ = mrope_position_ids(
            mm_token_type_ids=types, image_grid_thw=grids, spatial_merge_size=1,
            circle=self.circle_config if self.family == "circle" else None,
        )
        return pos[:, 0].T.contiguous()

    def axis(self, dim: int) -> List[int]:
        if self.family == "rope1d":
            return [0] * (dim // 2)
        if self.family == "c2rope":
            return self.c2rope_config.axis_table(dim)
        return mrope_axis_table(mrope_sections(dim), dim)

    def allowed(self, prompt: Prompt, q_offset: int = 0, q_len: Optional[int] = None) -> torch.Tensor:
        """bool [q_len, S]: which keys the queries q_offset ... may attend to."""
        seq = prompt.seq_len
        q_len = seq - q_offset if q_len is None else q_len
        if self.mask_name == "causal":
            rows = torch.arange(q_offset, q_offset + q_len).unsqueeze(1)
            return torch.arange(seq).unsqueeze(0) <= rows
        mask = chebyshev_mask(self._layout(prompt), self.c2rope_config, torch.bool, q_offset, q_len)
        return mask[0, 0]


def default_schemes() -> List[Scheme]:
    """1D RoPE, C2RoPE (seed defaults; the same positions with a causal mask; the paper's
    released code), M-RoPE (Qwen2-VL) and Circle-RoPE (alpha 0.5, radius 10)."""
    return [
        Scheme("rope1d", "1D RoPE (raster)", "rope1d"),
        Scheme("c2rope", "C2RoPE (default)", "c2rope", C2RoPEConfig()),
        Scheme("c2rope-causal", "C2RoPE (default, causal mask)", "c2rope", C2RoPEConfig(mask="causal")),
        Scheme("c2rope-paper", "C2RoPE (paper code)", "c2rope", C2RoPEConfig.paper_code()),
        Scheme("mrope", "M-RoPE (Qwen2-VL)", "mrope"),
        Scheme("circle", "Circle-RoPE (alpha 0.5, R 10)", "circle", circle_config=CircleRoPEConfig()),
    ]


SCHEME_KEYS = tuple(s.key for s in default_schemes())


C2ROPE_PREFIX = "c2rope-"


def c2rope_scheme(name: str) -> Scheme:
    """C2RoPE with C2RoPEConfig.from_name(name), keyed "c2rope-<name>" (ValueError for
    a bad name)."""
    return Scheme(C2ROPE_PREFIX + name, f"C2RoPE ({name})", "c2rope", C2RoPEConfig.from_name(name))


def _lookup(key: str, table) -> Optional[Scheme]:
    if key in table:
        return table[key]
    if key.startswith(C2ROPE_PREFIX):
        try:
            return c2rope_scheme(key[len(C2ROPE_PREFIX):])
        except ValueError:
            return None
    return None


def scheme_by_key(keys: Sequence[str]) -> List[Scheme]:
    """The default schemes by key, plus "c2rope-<name>" for any C2RoPEConfig.from_name
    name (c2rope-shared-high, c2rope-raster-spread-causal, ...)."""
    table = {s.key: s for s in default_schemes()}
    chosen = [_lookup(key, table) for key in keys]
    unknown = [key for key, scheme in zip(keys, chosen) if scheme is None]
    if unknown:
        raise ValueError(f"unknown scheme(s) {unknown}; choose from {list(table)} or c2rope-<name> "
                         "with a C2RoPEConfig.from_name name")
    return chosen
