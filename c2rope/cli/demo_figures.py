"""The two pictures of `python -m c2rope demo`: the mask and the rings of each image.

The mask is drawn cell for cell: every cell of the plotted array covers a whole number
of screen pixels (pixel_axes + interpolation="nearest"), so the PNG holds exactly the
plotted values, with no resampling that could alias the fine ring pattern into moire.
The whole-prompt panel averages square blocks of tokens first (exactly, as an area
average) when the prompt has more tokens than the panel has pixels.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from c2rope.layout import VisualLayout

from .plotting import new_figure, pixel_axes, require_matplotlib

__all__ = ["block_average", "ring_order", "mask_figure", "rings_figure", "PANEL_PX"]

PANEL_PX = 600  # target side of a mask panel in pixels
SPAN_COLOUR = "tab:orange"


def block_average(allowed: torch.Tensor, factor: int) -> torch.Tensor:
    """Share of allowed entries in each factor x factor block of a 2D bool/0-1 tensor,
    float64 [ceil(R / factor), ceil(C / factor)]; blocks cut by the edge average over
    the entries they hold."""
    rows, cols = allowed.shape
    n_rows, n_cols = -(-rows // factor), -(-cols // factor)
    pad = (0, n_cols * factor - cols, 0, n_rows * factor - rows)
    values = torch.nn.functional.pad(allowed.to(torch.float64), pad)
    counts = torch.nn.functional.pad(torch.ones(rows, cols, dtype=torch.float64), pad)
    blocks = (n_rows, factor, n_cols, factor)
    return values.view(blocks).sum((1, 3)) / counts.view(blocks).sum((1, 3))


def ring_order(layout: VisualLayout, span: Tuple[int, int, int]) -> Tuple[torch.Tensor, List[int]]:
    """Token indices of one image sorted by ring (inner first, raster order within a
    ring), and the number of tokens of each ring."""
    start, h, w = span
    rings = layout.ring[0, start : start + h * w].long()
    order = torch.sort(rings, stable=True).indices + start
    return order, torch.bincount(rings).tolist()


def _scale(cells: int) -> Tuple[int, int]:
    """(tokens per cell, pixels per cell) so that a panel of `cells` tokens is about PANEL_PX."""
    factor = max(1, -(-cells // PANEL_PX))
    return factor, max(1, PANEL_PX // -(-cells // factor))


def _segments(layout: VisualLayout) -> List[Tuple[str, int, int]]:
    """(name, start, end) of the text runs and images of the first sequence, in order."""
    segments, pos = [], 0
    for i, (start, h, w) in enumerate(layout.spans[0]):
        if start > pos:
            segments.append(("text", pos, start))
        segments.append((f"image {i + 1}", start, start + h * w))
        pos = start + h * w
    if pos < layout.seq_len:
        segments.append(("text", pos, layout.seq_len))
    return segments


def _label_centres(edges: Sequence[int], names: Sequence[str], px_per_token: float, min_px: int = 22):
    """Tick positions and labels at the middle of each interval, skipping labels that
    would sit closer than min_px to the previous one."""
    ticks, labels, last = [], [], None
    for (lo, hi), name in zip(zip(edges[:-1], edges[1:]), names):
        centre = (lo + hi) / 2
        if last is None or (centre - last) * px_per_token >= min_px:
            ticks.append(centre)
            labels.append(name)
            last = centre
    return ticks, labels


def mask_figure(layout: VisualLayout, mask: torch.Tensor, mask_name: str):
    """Two panels of the mask of sequence 0 (white = the query may attend to the key):
    the whole prompt with its text runs and images marked, and the first image against
    itself with its tokens sorted by ring, where the ring rule reads as a staircase."""
    allowed = mask[0, 0].bool()
    seq = allowed.shape[-1]
    whole_factor, whole_px = _scale(seq)
    whole = block_average(allowed, whole_factor)
    order, ring_sizes = ring_order(layout, layout.spans[0][0])
    image = allowed[order][:, order].to(torch.float64)
    image_factor, image_px = _scale(image.shape[0])
    image = block_average(image, image_factor)

    side_a, side_b = whole.shape[0] * whole_px, image.shape[0] * image_px
    left, gap, bar_gap, bar_w, right, bottom, top = 90, 130, 24, 18, 110, 80, 110
    width = left + side_a + gap + side_b + bar_gap + bar_w + right
    height = bottom + max(side_a, side_b) + top
    fig = new_figure(width, height, layout=None)
    image_kw = dict(cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", origin="upper")

    ax = pixel_axes(fig, left, bottom, side_a, side_a)
    shown = ax.imshow(whole.numpy(), extent=(0, seq, seq, 0), **image_kw)
    segments = _segments(layout)
    edges = sorted({lo for _, lo, _ in segments} | {seq})
    for edge in edges[1:-1]:
        ax.axhline(edge, color=SPAN_COLOUR, lw=0.8)
        ax.axvline(edge, color=SPAN_COLOUR, lw=0.8)
    # Number the image boundaries; 0 and the end only where they do not crowd them.
    inner = edges[1:-1]
    numbered = inner + [e for e in (0, seq) if all(abs(e - i) * side_a / seq >= 30 for i in inner)]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(sorted(numbered))
        axis.set_ticks(edges, minor=True)
    names_axis = ax.secondary_xaxis("top")
    ticks, labels = _label_centres(edges, [name for name, _, _ in segments], side_a / seq)
    names_axis.set_xticks(ticks, labels)
    names_axis.tick_params(colors=SPAN_COLOUR, labelsize=9)
    ax.set_xlabel("key token index")
    ax.set_ylabel("query token index")
    blocks = f", {whole_factor}x{whole_factor} tokens per cell" if whole_factor > 1 else ""
    ax.set_title(f"whole prompt ({seq} tokens{blocks})", pad=22)

    ax2 = pixel_axes(fig, left + side_a + gap, bottom, side_b, side_b)
    n_image = order.numel()
    ax2.imshow(image.numpy(), extent=(0, n_image, n_image, 0), **image_kw)
    ring_edges = [0]
    for size in ring_sizes:
        ring_edges.append(ring_edges[-1] + size)
    for edge in ring_edges[1:-1]:
        ax2.axhline(edge, color=SPAN_COLOUR, lw=0.5, alpha=0.8)
        ax2.axvline(edge, color=SPAN_COLOUR, lw=0.5, alpha=0.8)
    ticks, labels = _label_centres(ring_edges, [str(r) for r in range(len(ring_sizes))], side_b / n_image)
    ax2.set_xticks(ticks, labels)
    ax2.set_yticks(ticks, labels)
    ax2.set_xlabel("key ring (tokens of image 1 sorted by ring, 0 = centre)")
    ax2.set_ylabel("query ring")
    ax2.set_title(f"image 1 against itself ({n_image} tokens, rings inner to outer)", pad=8)

    bar = pixel_axes(fig, left + side_a + gap + side_b + bar_gap, bottom, bar_w, max(side_a, side_b))
    colorbar = fig.colorbar(shown, cax=bar, ticks=[0, 0.5, 1])
    colorbar.set_label("1 = may attend, 0 = masked (grey: share of a block)")
    fig.suptitle(f"Chebyshev mask ({mask_name}), {layout.seq_len} tokens: rows are queries, columns keys",
                 y=1 - 20 / height, fontsize=12)
    return fig


def rings_figure(layout: VisualLayout, cell_px: int = 16):
    """Each image of sequence 0 over its (x, y) grid, one colour per Chebyshev ring."""
    spans = layout.spans[0]
    n_rings = max(int(layout.num_rings[0, start]) for start, _, _ in spans)
    matplotlib = require_matplotlib()
    from matplotlib.colors import BoundaryNorm

    cmap = matplotlib.colormaps["viridis"].resampled(n_rings)
    norm = BoundaryNorm([r - 0.5 for r in range(n_rings + 1)], n_rings)
    h_max = max(h for _, h, _ in spans)
    w_sum = sum(w for _, _, w in spans)
    fig = new_figure(w_sum * cell_px + 160 * len(spans) + 120, h_max * cell_px + 170)
    axes = fig.subplots(1, len(spans), squeeze=False)[0]
    for i, (ax, (start, h, w)) in enumerate(zip(axes, spans)):
        rings = layout.ring[0, start : start + h * w].view(h, w)
        shown = ax.imshow(rings.numpy(), cmap=cmap, norm=norm, interpolation="nearest")
        ax.plot([(w - 1) / 2], [(h - 1) / 2], marker="+", color="white", markersize=10)
        ax.set_title(f"image {i + 1}: tokens {start}-{start + h * w - 1}, {h}x{w}")
        ax.set_xlabel("x (column)")
        ax.set_ylabel("y (row)")
    colorbar = fig.colorbar(shown, ax=list(axes), ticks=list(range(n_rings)))
    colorbar.set_label("Chebyshev ring (0 = centre, +)")
    fig.suptitle("Rings of each image: the mask and the concentric order work ring by ring")
    return fig
