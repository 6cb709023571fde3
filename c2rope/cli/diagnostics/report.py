"""report.md and the printed summary of `python -m c2rope diagnose`."""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Sequence, Tuple

from .figures import CONTINUITY_LIMIT, DECAY_LIMIT, LOG_DECADES
from .schemes import Scheme

__all__ = ["markdown_report", "summary_lines"]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3f}"


def _table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> List[str]:
    """Markdown table lines; align has one letter per column, l(eft) or r(ight)."""
    rule = "".join("---:|" if a == "r" else "---|" for a in align)
    return ["| " + " | ".join(header) + " |", "|" + rule] + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_report(settings, schemes: Sequence[Scheme], results: Dict[str, Dict],
                    paths: Dict[str, str], seconds: float) -> str:
    """report.md: every table of the run. settings: a DiagnoseSettings; paths: the PNGs
    by name (continuity_KEY, rings_KEY, decay)."""
    h, w = settings.grid
    texts = [f"text {t}" for t in settings.text_lengths]
    decay_align = "l" + "r" * len(texts)
    png = {name: os.path.basename(path) for name, path in paths.items()}
    res = {s.key: results[s.key] for s in schemes}

    def slots(s: Scheme) -> str:
        axis = s.axis(settings.dim)
        return ", ".join(f"{name} {axis.count(i)}" for i, name in enumerate(_axis_names(s)) if axis.count(i))

    lines = [
        "# c2rope diagnose: pure positional attention",
        "",
        f"Rotary dim {settings.dim}, base {settings.base:g} (HF default frequencies); {settings.draws} random "
        f"q/k directions ({settings.qk}, norm {settings.norm}); softmax under each scheme's own mask, "
        f"averaged over draws. Seed {settings.seed}; {seconds:.1f} s.",
        "",
        *_table(["scheme", "mask", "axis slots (of dim/2)"], "lll",
                ([s.name, s.mask_name, slots(s)] for s in schemes)),
        "",
        f"## Spatial continuity ({h}x{w} image, {settings.text_around} text tokens around it)",
        "",
        "Mean attention of an interior patch to its vertical neighbours (up, down) over that to its",
        "horizontal neighbours (left, right); masked neighbours count as 0. 1.0 = no column",
        "discontinuity; below 1, the patch above is seen less than the one beside it. `allowed` =",
        "share of those neighbour pairs the mask lets through (vertical / horizontal).",
        "",
        *_table(["scheme", "vertical / horizontal", "vertical", "horizontal", "allowed v / h", "map"], "lrrrrl",
                ([s.name, f"**{c['ratio']:.3f}**", _fmt(c["vertical"]), _fmt(c["horizontal"]),
                  f"{c['vertical_allowed']:.2f} / {c['horizontal_allowed']:.2f}", png["continuity_" + s.key]]
                 for s in schemes for c in [res[s.key]["continuity"]])),
        "",
        "Maps: per patch (edges included) log2(vertical / horizontal), blue < 0 (column break), "
        f"white = 0, red > 0, colour clipped at +-{CONTINUITY_LIMIT:g}; on the top row and left column a "
        "causal mask hides the only vertical resp. horizontal neighbour that precedes the patch.",
        "",
        "## Chebyshev causality (rings inside the image, 0 = centre)",
        "",
        "Mass an image query puts on keys of the same image in rings nearer the centre, its own ring,",
        "rings farther out, and outside the image (text before it).",
        "",
        *_table(["scheme", "nearer", "same ring", "farther", "outside image", "heat map"], "lrrrrl",
                ([s.name, *(f"{r[k]:.3f}" for k in ("nearer", "same", "farther", "outside")), png["rings_" + s.key]]
                 for s in schemes for r in [res[s.key]["rings"]])),
        "",
        "Heat maps (rows: query ring, columns: key ring, ring 0 = centre at the top left): left panel =",
        "share of pairs the mask allows (black 0, white 1); right panel = attention mass from a query of",
        f"the row's ring onto the column's ring, log10 over the {LOG_DECADES} decades below the panel's maximum.",
        "",
        f"## Long-range decay ({settings.images} images of {h}x{w}, 8 text tokens between, then text)",
        "",
        "Attention of the last token on the first image; `x uniform` divides by the first image's",
        "share of the keys that token may see (1.0 = what a position-blind model gives).",
        "",
        *_table(["scheme", *texts], decay_align,
                ([s.name, *(f"{_fmt(d['first_image'])} ({d['relative']:.2f}x uniform)" for d in res[s.key]["decay"])]
                 for s in schemes)),
        "",
        "Mass on all images together:",
        "",
        *_table(["scheme", *texts], decay_align,
                ([s.name, *(_fmt(d["all_images"]) for d in res[s.key]["decay"])] for s in schemes)),
        "",
        f"{png['decay']}: rows = schemes in table order, columns = text lengths; "
        f"colour log2(x uniform), blue = less than uniform, clipped at +-{DECAY_LIMIT:g}; each cell "
        "writes the ratio.",
        "",
        "## Cross-modal bias: Per-Token Distance",
        "",
        "PTD = mean over text tokens of the mean absolute deviation of their Euclidean distances to",
        "the image tokens (0 = every patch equally far from every text token). Position vectors as",
        "the scheme builds them, every axis alike.",
        "",
        *_table(["scheme", f"{settings.paper_ptd_grid[0]}x{settings.paper_ptd_grid[1]} image + "
                 f"{settings.paper_ptd_text} text (paper Table 1)", f"{h}x{w} image + {settings.text_around} text"],
                "lrr", ([s.name, f"{res[s.key]['ptd_paper']:.3f}", f"{res[s.key]['ptd_grid']:.3f}"] for s in schemes)),
        "",
        "Paper values (Circle-RoPE, Table 1): 1D raster 2.22, Circle-RoPE 0.",
        "",
    ]
    return "\n".join(lines)


def _axis_names(scheme: Scheme) -> Tuple[str, ...]:
    if scheme.family == "rope1d":
        return ("position",)
    if scheme.family == "c2rope":
        return ("m", "x", "y")
    return ("t", "h", "w")


def summary_lines(schemes: Sequence[Scheme], results: Dict[str, Dict], settings) -> List[str]:
    """One line per scheme for the terminal: continuity, farther rings, decay, PTD."""
    last = settings.text_lengths[-1]
    lines = [f"{'scheme':<32} {'mask':<20} {'v/h':>6} {'farther':>8} {'img1@' + str(last):>12} {'PTD':>6}"]
    for s in schemes:
        res = results[s.key]
        lines.append(
            f"{s.name:<32} {s.mask_name:<20} {res['continuity']['ratio']:>6.3f} {res['rings']['farther']:>8.3f} "
            f"{res['decay'][-1]['relative']:>11.2f}x {res['ptd_paper']:>6.2f}"
        )
    return lines


