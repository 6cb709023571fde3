"""The four measurements of `python -m c2rope diagnose`, one function each.

All take a Scheme and the shared rotary settings (Probe) and return plain numbers and
tensors; drawing and reporting live in diagnose.py.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import torch

from c2rope.layout import grid_rings
from c2rope.metrics import per_token_distance

from .attention import phase_table, positional_attention, positional_scores
from .prompt import Prompt
from .schemes import Scheme

__all__ = ["Probe", "image_attention", "continuity", "ring_causality", "decay", "ptd"]


@dataclasses.dataclass(frozen=True)
class Probe:
    """Rotary frequencies and q/k draws shared by every scheme of one run."""

    inv_freq: torch.Tensor  # float32 [d/2]
    weights: torch.Tensor   # complex128 [draws, d/2], see attention.qk_weights

    @property
    def dim(self) -> int:
        return 2 * self.inv_freq.shape[0]

    def attention(self, scheme: Scheme, prompt: Prompt, q_offset: int, q_len: int):
        """(draw-averaged positional attention [Q, S], allowed keys bool [Q, S]) of the
        queries q_offset ... q_offset + q_len - 1 under the scheme's mask."""
        phase = phase_table(scheme.positions(prompt), self.inv_freq, scheme.axis(self.dim))
        queries = torch.arange(q_offset, q_offset + q_len)
        scores = positional_scores(phase, self.weights, queries)
        allowed = scheme.allowed(prompt, q_offset, q_len)
        return positional_attention(scores, allowed), allowed


def image_attention(probe: Probe, scheme: Scheme, grid: Tuple[int, int], text_before: int, text_after: int):
    """(prompt, start, attention [H*W, S], allowed [H*W, S]) of the image tokens of
    text_before + one image + text_after."""
    prompt = Prompt.build([grid], text_before=text_before, text_after=text_after)
    start = prompt.spans[0][0]
    h, w = grid
    attn, allowed = probe.attention(scheme, prompt, start, h * w)
    return prompt, start, attn, allowed


def _neighbour_mean(attn_img: torch.Tensor, h: int, w: int, offsets) -> torch.Tensor:
    """Per image query, the mean attention to its in-grid neighbours at the given
    (d_row, d_col) offsets (masked neighbours count as 0): [H, W]."""
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    query = (rows * w + cols).flatten()
    total = torch.zeros(h * w, dtype=attn_img.dtype)
    count = torch.zeros(h * w, dtype=attn_img.dtype)
    for dr, dc in offsets:
        r, c = rows + dr, cols + dc
        inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w)).flatten()
        key = (r.clamp(0, h - 1) * w + c.clamp(0, w - 1)).flatten()
        total += torch.where(inside, attn_img[query, key], 0.0)
        count += inside.to(count.dtype)
    return (total / count.clamp_min(1)).view(h, w)


def continuity(attn: torch.Tensor, allowed: torch.Tensor, start: int, grid: Tuple[int, int]) -> Dict:
    """Attention to vertical vs horizontal grid neighbours (up/down vs left/right).

    ratio = mean over interior patches of their vertical-neighbour attention / the same
    for horizontal neighbours; 1.0 means a patch sees the patch above as much as the one
    beside it (no column discontinuity). Masked neighbours count as 0, so a mask that
    hides one direction shows up here too. locality = mean over interior patches of
    their neighbour attention over their mean attention per allowed key of the image
    (1 = neighbours get no more than any other patch). Also the per-patch log2 ratio map [H, W] (all
    patches) and
    which share of interior vertical / horizontal neighbour pairs the mask allows."""
    h, w = grid
    img = slice(start, start + h * w)
    vertical = _neighbour_mean(attn[:, img], h, w, ((-1, 0), (1, 0)))
    horizontal = _neighbour_mean(attn[:, img], h, w, ((0, -1), (0, 1)))
    v_allowed = _neighbour_mean(allowed[:, img].to(torch.float64), h, w, ((-1, 0), (1, 0)))
    h_allowed = _neighbour_mean(allowed[:, img].to(torch.float64), h, w, ((0, -1), (0, 1)))
    tiny = torch.finfo(torch.float64).tiny
    # Summaries over interior patches only: an edge patch lacks a neighbour on one side,
    # and under a causal mask a missing "up" or "left" would read as a break.
    inner = (slice(1, h - 1), slice(1, w - 1))
    # Locality: a ratio near 1 also holds when x and y do not move attention at all, so
    # compare the neighbours with the mean allowed key of the image (1 = no preference).
    per_key = (attn[:, img].sum(1) / allowed[:, img].sum(1).clamp_min(1)).view(h, w)
    neighbours = (vertical + horizontal) / 2
    return {
        "ratio": float(vertical[inner].mean() / horizontal[inner].mean()),
        "locality": float((neighbours[inner] / per_key[inner]).mean()),
        "vertical": float(vertical[inner].mean()),
        "horizontal": float(horizontal[inner].mean()),
        "vertical_allowed": float(v_allowed[inner].mean()),
        "horizontal_allowed": float(h_allowed[inner].mean()),
        "log2_map": torch.log2((vertical + tiny) / (horizontal + tiny)),
    }


def ring_causality(attn: torch.Tensor, allowed: torch.Tensor, start: int, grid: Tuple[int, int]) -> Dict:
    """Ring x ring matrices inside the image (rows: query ring, columns: key ring, 0 =
    centre): `may` = share of pairs the mask allows, `do` = attention mass a query of
    ring a puts on ring b (mean over the ring's queries). Plus the mass of image queries
    on nearer / same / farther rings and outside the image."""
    h, w = grid
    rings = grid_rings(h, w).flatten().long()
    n_rings = int(rings.max()) + 1
    onehot = torch.nn.functional.one_hot(rings, n_rings).to(torch.float64)  # [HW, R]
    per_ring = onehot.sum(0)
    img = slice(start, start + h * w)
    attn_img, allowed_img = attn[:, img], allowed[:, img].to(torch.float64)
    may = onehot.T @ allowed_img @ onehot / (per_ring.unsqueeze(1) * per_ring.unsqueeze(0))
    do = onehot.T @ attn_img @ onehot / per_ring.unsqueeze(1)
    key_ring = rings.view(1, -1)
    query_ring = rings.view(-1, 1)
    nearer = (attn_img * (key_ring < query_ring)).sum(1).mean()
    same = (attn_img * (key_ring == query_ring)).sum(1).mean()
    farther = (attn_img * (key_ring > query_ring)).sum(1).mean()
    return {
        "may": may,
        "do": do,
        "nearer": float(nearer),
        "same": float(same),
        "farther": float(farther),
        "outside": float(1.0 - attn_img.sum(1).mean()),
    }


def decay(probe: Probe, scheme: Scheme, grid: Tuple[int, int], n_images: int, text_lengths: Sequence[int],
          text_before: int = 8, text_between: int = 8) -> List[Dict]:
    """Attention of the last token on the first image (and on all images) when
    `text` tokens follow N images, for each text length. `uniform` is the first image's
    share of the keys the last token may see (what a position-blind model gives);
    `relative` = mass / uniform."""
    h, w = grid
    rows = []
    for text in text_lengths:
        prompt = Prompt.build([grid] * n_images, text_before, text_between, text_after=text)
        seq = prompt.seq_len
        attn, allowed = probe.attention(scheme, prompt, seq - 1, 1)
        attn, allowed = attn[0], allowed[0]
        first = prompt.spans[0][0]
        first_mass = float(attn[first : first + h * w].sum())
        all_mass = float(attn[prompt.is_image].sum())
        uniform = float(allowed[first : first + h * w].sum()) / float(allowed.sum())
        rows.append({"text": int(text), "seq_len": seq, "first_image": first_mass, "all_images": all_mass,
                     "uniform": uniform, "relative": first_mass / uniform})
    return rows


def ptd(scheme: Scheme, grid: Tuple[int, int], text_after: int) -> float:
    """Per-Token Distance of one image followed by text (c2rope.per_token_distance on the
    scheme's own positions, every axis alike)."""
    prompt = Prompt.build([grid], text_after=text_after)
    pos = scheme.positions(prompt)
    is_image = prompt.is_image
    return per_token_distance(pos[is_image], pos[~is_image])
