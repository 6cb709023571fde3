"""The heat maps of `python -m c2rope diagnose` (matplotlib; see c2rope.cli.plotting).

Each function takes the measurements of c2rope.cli.diagnostics.measures and returns a
Figure; the data each one plots is exactly what report.md tabulates.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch

from ..plotting import new_figure
from .schemes import Scheme

__all__ = ["continuity_figure", "rings_figure", "decay_figure", "CONTINUITY_LIMIT", "DECAY_LIMIT"]

CONTINUITY_LIMIT = 2.0  # colour range of log2(vertical / horizontal): +-2 = 4x either way
DECAY_LIMIT = 6.0       # colour range of log2(mass / uniform share): +-6 = 64x either way
LOG_DECADES = 3         # the attention heat map spans this many decades below its maximum


def continuity_figure(scheme: Scheme, continuity: Dict):
    """Per patch, log2 of its attention to vertical over horizontal neighbours."""
    log2_map = continuity["log2_map"]
    h, w = log2_map.shape
    fig = new_figure(640, 500 * h // w + 60)
    ax = fig.subplots()
    shown = ax.imshow(log2_map.numpy(), cmap="RdBu_r", vmin=-CONTINUITY_LIMIT, vmax=CONTINUITY_LIMIT,
                      interpolation="nearest")
    ax.set_title(f"{scheme.name}\nvertical / horizontal neighbour attention: {continuity['ratio']:.3f}")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    colorbar = fig.colorbar(shown, ax=ax, extend="both")
    colorbar.set_label("log2(vertical / horizontal), blue: column break")
    return fig


def rings_figure(scheme: Scheme, rings: Dict):
    """Ring x ring: share of pairs the mask allows, and attention mass (log10)."""
    may, do = rings["may"], rings["do"]
    log_do = torch.log10(do.clamp_min(1e-300))
    top = float(log_do.max())
    n = may.shape[0]
    fig = new_figure(1000, 470)
    ax_may, ax_do = fig.subplots(1, 2)
    panels = (
        (ax_may, may, dict(cmap="gray", vmin=0.0, vmax=1.0), "mask: share of pairs allowed",
         "allowed share", "neither"),
        (ax_do, log_do, dict(cmap="viridis", vmin=top - LOG_DECADES, vmax=top),
         "attention mass from query ring to key ring", "log10 of mass", "min"),
    )
    for ax, values, colours, title, label, extend in panels:
        shown = ax.imshow(values.numpy(), interpolation="nearest", **colours)
        ax.set_title(title)
        ax.set_xlabel("key ring (0 = centre)")
        ax.set_ylabel("query ring")
        ticks = list(range(0, n, max(1, math.ceil(n / 12))))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        fig.colorbar(shown, ax=ax, label=label, extend=extend)
    fig.suptitle(f"{scheme.name}: Chebyshev rings inside the image")
    return fig


def decay_figure(schemes: Sequence[Scheme], results: Dict[str, Dict], text_lengths: Sequence[int]):
    """Schemes (rows) x text lengths (columns): the first image's attention from the
    last token over its uniform share, log2 colour and the ratio written in the cell."""
    relative = torch.tensor([[row["relative"] for row in results[s.key]["decay"]] for s in schemes],
                            dtype=torch.float64)
    log2 = torch.log2(relative).clamp(-DECAY_LIMIT, DECAY_LIMIT)  # no mass (-inf) -> bluest
    fig = new_figure(260 + 110 * len(text_lengths), 150 + 46 * len(schemes))
    ax = fig.subplots()
    shown = ax.imshow(log2.numpy(), cmap="RdBu_r", vmin=-DECAY_LIMIT, vmax=DECAY_LIMIT,
                      interpolation="nearest", aspect="auto")
    for i in range(len(schemes)):
        for j in range(len(text_lengths)):
            value = float(relative[i, j])
            ink = "white" if abs(float(log2[i, j])) > DECAY_LIMIT / 2 else "black"
            ax.text(j, i, f"{value:.2g}x", ha="center", va="center", color=ink, fontsize=9)
    ax.set_xticks(range(len(text_lengths)), [str(t) for t in text_lengths])
    ax.set_yticks(range(len(schemes)), [s.name for s in schemes])
    ax.set_xlabel("text tokens after the images")
    ax.set_title("Attention of the last token on the first image, over its uniform share")
    colorbar = fig.colorbar(shown, ax=ax, extend="both")
    colorbar.set_label("log2(mass / uniform share)")
    return fig
