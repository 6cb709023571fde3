"""`python -m c2rope diagnose`: what each positional scheme does to attention, measured.

On synthetic prompts (nothing downloaded), for 1D RoPE, C2RoPE (seed defaults, the same
positions under a causal mask, the paper's released code), M-RoPE and Circle-RoPE, it
computes pure positional attention (c2rope.diagnostics.attention: the softmax of the
scores the rotary encoding alone induces between identical random q/k, averaged over
draws, under each scheme's own mask) and reports:

- spatial continuity: attention to vertical vs horizontal neighbours in a 24x24 image;
- Chebyshev causality: ring x ring matrices of what the mask allows and what is attended;
- long-range decay: attention of the last token on the first of N images as text grows;
- cross-modal bias: Per-Token Distance (the Circle-RoPE paper's setup and 24x24).

It writes a markdown report and PNG heat maps and prints where. Numbers are reported
as measured, including where a scheme looks bad.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import torch

from . import _png
from .diagnostics import font, images
from .diagnostics.attention import NORMS, QK_MODES, default_inv_freq, qk_weights
from .diagnostics.measures import Probe, continuity, decay, image_attention, ptd, ring_causality
from .diagnostics.progress import Progress
from .diagnostics.schemes import SCHEME_KEYS, Scheme, default_schemes, scheme_by_key

__all__ = ["DiagnoseSettings", "run_diagnose", "add_diagnose_arguments", "main_diagnose"]


@dataclasses.dataclass(frozen=True)
class DiagnoseSettings:
    """grid: the image of the continuity / ring / PTD tests; dim, base: rotary head dim
    and base (HF default frequencies); draws: random q/k directions averaged; qk, norm:
    see c2rope.diagnostics.attention; images, text_lengths: the decay test (N images
    separated by 8 text tokens, then each number of text tokens); text_around: text
    tokens before and after the image of the continuity test."""

    grid: Tuple[int, int] = (24, 24)
    dim: int = 128
    base: float = 10000.0
    draws: int = 8
    seed: int = 0
    qk: str = "shared"
    norm: str = "rms"
    images: int = 3
    text_lengths: Tuple[int, ...] = (8, 64, 256, 1024, 4096)
    text_around: int = 8
    paper_ptd_grid: Tuple[int, int] = (3, 3)
    paper_ptd_text: int = 5

    def __post_init__(self):
        h, w = self.grid
        if h < 3 or w < 3:
            raise ValueError(f"grid must be at least 3x3 (interior patches), got {self.grid}")
        if self.dim < 8 or self.dim % 8:
            raise ValueError(f"dim must be a multiple of 8 >= 8, got {self.dim}")
        if not self.base > 1:
            raise ValueError(f"base must be > 1, got {self.base}")
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if self.images < 1:
            raise ValueError(f"images must be >= 1, got {self.images}")
        if not self.text_lengths or min(self.text_lengths) < 1:
            raise ValueError(f"text_lengths must be a non-empty list of ints >= 1, got {self.text_lengths}")
        if self.qk not in QK_MODES:
            raise ValueError(f"qk must be one of {QK_MODES}, got {self.qk!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.text_around < 1:
            raise ValueError(f"text_around must be >= 1, got {self.text_around}")


def _measure(settings: DiagnoseSettings, schemes: Sequence[Scheme], progress: Progress) -> Dict[str, Dict]:
    generator = torch.Generator().manual_seed(settings.seed)
    probe = Probe(default_inv_freq(settings.dim, settings.base),
                  qk_weights(settings.draws, settings.dim, generator, settings.qk, settings.norm))
    results = {}
    for scheme in schemes:
        _, start, attn, allowed = image_attention(probe, scheme, settings.grid, settings.text_around,
                                                  settings.text_around)
        result = {"continuity": continuity(attn, allowed, start, settings.grid),
                  "rings": ring_causality(attn, allowed, start, settings.grid)}
        progress.step(f"continuity + rings: {scheme.name}")
        result["decay"] = decay(probe, scheme, settings.grid, settings.images, settings.text_lengths)
        progress.step(f"decay: {scheme.name}")
        result["ptd_paper"] = ptd(scheme, settings.paper_ptd_grid, settings.paper_ptd_text)
        result["ptd_grid"] = ptd(scheme, settings.grid, settings.text_around)
        progress.step(f"PTD: {scheme.name}")
        results[scheme.key] = result
    return results


# ------------------------------------------------------------------------ PNGs


DECAY_CELL = (24, 48)  # height, width in pixels of one decay cell


def _cells(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return image.repeat_interleave(height, 0).repeat_interleave(width, 1)


def _continuity_png(scheme: Scheme, result: Dict) -> torch.Tensor:
    return font.stack_rows([
        font.render_text(scheme.name),
        font.render_text("log2 vertical/horizontal"),
        font.render_text("blue < 0: column break"),
        _png.upscale(images.diverging(result["continuity"]["log2_map"], 2.0), 12),
    ])


def _rings_png(scheme: Scheme, result: Dict) -> torch.Tensor:
    may, do = result["rings"]["may"], result["rings"]["do"]
    log_do = torch.log10(do.clamp_min(1e-12))
    top = float(log_do.max())
    panels = font.stack_columns([
        font.stack_rows([font.render_text("may attend"), _png.upscale(images.sequential(may, 0.0, 1.0), 16)]),
        font.stack_rows([font.render_text("do attend, log10"),
                         _png.upscale(images.sequential(log_do, top - 3, top), 16)]),
    ], gap=8)
    return font.stack_rows([font.render_text(scheme.name), panels,
                            font.render_text("rows: query ring, cols: key ring"),
                            font.render_text("ring 0 = centre, top left")])


def _decay_png(schemes: Sequence[Scheme], results: Dict[str, Dict], text_lengths: Sequence[int]) -> torch.Tensor:
    """Schemes (rows) x text lengths (columns), log2 of the first image's mass over its
    uniform share; -inf (no mass) saturates to the bluest colour."""
    cell_h, cell_w = DECAY_CELL
    relative = torch.tensor([[row["relative"] for row in results[s.key]["decay"]] for s in schemes])
    heat = _cells(images.diverging(torch.log2(relative), 6.0), cell_h, cell_w)
    names = [font.render_text(s.key) for s in schemes]
    label_w = max(n.shape[1] for n in names)
    labels = torch.cat([font.fit(n, cell_h, label_w) for n in names])
    header = torch.cat([font.fit(font.render_text(str(t)), font.render_text("0").shape[0], cell_w)
                        for t in text_lengths], dim=1)
    indent = torch.full((header.shape[0], label_w + 4, 3), 255, dtype=torch.uint8)
    return font.stack_rows([
        font.render_text("last token on 1st image vs text after"),
        font.stack_columns([indent, header]),
        font.stack_columns([labels, heat], gap=4),
        font.render_text("log2 of mass / uniform share"),
        font.render_text("blue: less, red: more"),
    ])


def _write_pngs(out_dir: str, schemes: Sequence[Scheme], results: Dict[str, Dict],
                text_lengths: Sequence[int]) -> Dict[str, str]:
    paths = {}
    for scheme in schemes:
        for kind, draw in (("continuity", _continuity_png), ("rings", _rings_png)):
            name = f"{kind}_{scheme.key}"
            paths[name] = _png.write_png(os.path.join(out_dir, name + ".png"), draw(scheme, results[scheme.key]))
    paths["decay"] = _png.write_png(os.path.join(out_dir, "decay.png"), _decay_png(schemes, results, text_lengths))
    return paths


# ------------------------------------------------------------------------ report


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3f}"


def _report(settings: DiagnoseSettings, schemes: Sequence[Scheme], results: Dict[str, Dict],
            paths: Dict[str, str], seconds: float) -> str:
    h, w = settings.grid
    lines = [
        "# c2rope diagnose: pure positional attention",
        "",
        f"Rotary dim {settings.dim}, base {settings.base:g} (HF default frequencies); {settings.draws} random "
        f"q/k directions ({settings.qk}, norm {settings.norm}); softmax under each scheme's own mask, "
        f"averaged over draws. Seed {settings.seed}; {seconds:.1f} s.",
        "",
        "| scheme | mask | axis slots (of dim/2) |",
        "|---|---|---|",
    ]
    for s in schemes:
        axis = s.axis(settings.dim)
        counts = ", ".join(f"{name} {axis.count(i)}" for i, name in enumerate(_axis_names(s)) if axis.count(i))
        lines.append(f"| {s.name} | {s.mask_name} | {counts} |")

    lines += [
        "",
        f"## Spatial continuity ({h}x{w} image, {settings.text_around} text tokens around it)",
        "",
        "Mean attention of an interior patch to its vertical neighbours (up, down) over that to its",
        "horizontal neighbours (left, right); masked neighbours count as 0. 1.0 = no column",
        "discontinuity; below 1, the patch above is seen less than the one beside it. `allowed` =",
        "share of those neighbour pairs the mask lets through (vertical / horizontal).",
        "",
        "| scheme | vertical / horizontal | vertical | horizontal | allowed v / h | map |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in schemes:
        c = results[s.key]["continuity"]
        lines.append(
            f"| {s.name} | **{c['ratio']:.3f}** | {_fmt(c['vertical'])} | {_fmt(c['horizontal'])} | "
            f"{c['vertical_allowed']:.2f} / {c['horizontal_allowed']:.2f} | "
            f"{os.path.basename(paths['continuity_' + s.key])} |"
        )
    lines += [
        "",
        "Maps: per patch (edges included) log2(vertical / horizontal), blue < 0 (column break), "
        "white = 0, red > 0, clipped at +-2; on the top row and left column a causal mask hides the "
        "only vertical resp. horizontal neighbour that precedes the patch.",
        "",
        "## Chebyshev causality (rings inside the image, 0 = centre)",
        "",
        "Mass an image query puts on keys of the same image in rings nearer the centre, its own ring,",
        "rings farther out, and outside the image (text before it).",
        "",
        "| scheme | nearer | same ring | farther | outside image | heat map |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in schemes:
        r = results[s.key]["rings"]
        lines.append(
            f"| {s.name} | {r['nearer']:.3f} | {r['same']:.3f} | {r['farther']:.3f} | {r['outside']:.3f} | "
            f"{os.path.basename(paths['rings_' + s.key])} |"
        )
    lines += [
        "",
        "Heat maps (rows: query ring, columns: key ring, centre at the top left): left panel = share of",
        "pairs the mask allows (dark 0, bright 1); right panel = attention mass from a query of row ring",
        "onto column ring, log10 over the 3 decades below the panel's maximum.",
        "",
        f"## Long-range decay ({settings.images} images of {h}x{w}, 8 text tokens between, then text)",
        "",
        "Attention of the last token on the first image; `x uniform` divides by the first image's",
        "share of the keys that token may see (1.0 = what a position-blind model gives).",
        "",
        "| scheme | " + " | ".join(f"text {t}" for t in settings.text_lengths) + " |",
        "|---|" + "---:|" * len(settings.text_lengths),
    ]
    for s in schemes:
        cells = [f"{_fmt(row['first_image'])} ({row['relative']:.2f}x uniform)" for row in results[s.key]["decay"]]
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mass on all images together:",
        "",
        "| scheme | " + " | ".join(f"text {t}" for t in settings.text_lengths) + " |",
        "|---|" + "---:|" * len(settings.text_lengths),
    ]
    for s in schemes:
        cells = [_fmt(row["all_images"]) for row in results[s.key]["decay"]]
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{os.path.basename(paths['decay'])}: rows = schemes in table order, columns = text lengths; "
        "log2(x uniform), blue = less than uniform, clipped at +-6.",
        "",
        "## Cross-modal bias: Per-Token Distance",
        "",
        "PTD = mean over text tokens of the mean absolute deviation of their Euclidean distances to",
        "the image tokens (0 = every patch equally far from every text token). Position vectors as",
        "the scheme builds them, every axis alike.",
        "",
        f"| scheme | {settings.paper_ptd_grid[0]}x{settings.paper_ptd_grid[1]} image + "
        f"{settings.paper_ptd_text} text (paper Table 1) | {h}x{w} image + {settings.text_around} text |",
        "|---|---:|---:|",
    ]
    for s in schemes:
        res = results[s.key]
        lines.append(f"| {s.name} | {res['ptd_paper']:.3f} | {res['ptd_grid']:.3f} |")
    lines += ["", "Paper values (Circle-RoPE, Table 1): 1D raster 2.22, Circle-RoPE 0.", ""]
    return "\n".join(lines)


def _axis_names(scheme: Scheme) -> Tuple[str, ...]:
    if scheme.family == "rope1d":
        return ("position",)
    if scheme.family == "c2rope":
        return ("m", "x", "y")
    return ("t", "h", "w")


def _summary(schemes: Sequence[Scheme], results: Dict[str, Dict], settings: DiagnoseSettings) -> List[str]:
    last = settings.text_lengths[-1]
    lines = [f"{'scheme':<32} {'mask':<20} {'v/h':>6} {'farther':>8} {'img1@' + str(last):>12} {'PTD':>6}"]
    for s in schemes:
        res = results[s.key]
        lines.append(
            f"{s.name:<32} {s.mask_name:<20} {res['continuity']['ratio']:>6.3f} {res['rings']['farther']:>8.3f} "
            f"{res['decay'][-1]['relative']:>11.2f}x {res['ptd_paper']:>6.2f}"
        )
    return lines


def run_diagnose(out_dir: str = "c2rope_diagnose", settings: Optional[DiagnoseSettings] = None,
                 schemes: Optional[Sequence[Scheme]] = None, out: Optional[TextIO] = None,
                 progress: Optional[bool] = None) -> Dict:
    """Run every measurement, write `report.md` and the PNGs to out_dir, print a summary
    and the paths to `out` (default stdout). progress: None = bar on a terminal only.
    Returns {"results": per scheme key, "paths": name -> file, "report": path}."""
    out = out if out is not None else sys.stdout
    settings = settings or DiagnoseSettings()
    schemes = list(schemes) if schemes is not None else default_schemes()
    if not schemes:
        raise ValueError("schemes must not be empty")
    start = time.perf_counter()
    bar = Progress(3 * len(schemes), enabled=progress)
    try:
        results = _measure(settings, schemes, bar)
    finally:
        bar.close()
    os.makedirs(out_dir, exist_ok=True)
    paths = _write_pngs(out_dir, schemes, results, settings.text_lengths)
    report = _report(settings, schemes, results, paths, time.perf_counter() - start)
    report_path = os.path.join(out_dir, "report.md")
    with open(report_path, "w") as f:
        f.write(report)
    print("c2rope diagnose: pure positional attention "
          f"(dim {settings.dim}, {settings.draws} draws, {settings.grid[0]}x{settings.grid[1]} image)", file=out)
    print("  v/h: vertical/horizontal neighbour attention (1 = no column break); farther: mass on outer "
          "rings;", file=out)
    print(f"  img1@{settings.text_lengths[-1]}: first image's attention vs uniform after "
          f"{settings.text_lengths[-1]} text tokens; PTD: paper's 3x3 + 5 text setup", file=out)
    for line in _summary(schemes, results, settings):
        print("  " + line, file=out)
    print("\nWrote:", file=out)
    print(f"  {report_path}  (all tables)", file=out)
    for name, path in paths.items():
        print(f"  {path}", file=out)
    return {"results": results, "paths": dict(paths, report=report_path), "report": report_path}


# ------------------------------------------------------------------------ command line


def _grid_arg(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 24x24, got {text!r}") from None
    return h, w


def _int_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of ints, got {text!r}") from None


def add_diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m c2rope diagnose`."""
    d = DiagnoseSettings()
    parser.add_argument("--out", default="c2rope_diagnose", help="output directory (default: ./c2rope_diagnose)")
    parser.add_argument("--schemes", default=",".join(SCHEME_KEYS),
                        help=f"comma list of schemes (default: all of {','.join(SCHEME_KEYS)})")
    parser.add_argument("--grid", type=_grid_arg, default=d.grid, help="image grid HxW (default 24x24)")
    parser.add_argument("--dim", type=int, default=d.dim, help="rotary head dim (default 128)")
    parser.add_argument("--base", type=float, default=d.base, help="rotary base (default 10000)")
    parser.add_argument("--draws", type=int, default=d.draws, help="random q/k directions averaged (default 8)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the q/k draws (default 0)")
    parser.add_argument("--qk", default=d.qk, choices=("shared", "independent"),
                        help="same random direction for q and k (default), or independent ones")
    parser.add_argument("--norm", default=d.norm, choices=("rms", "unit"),
                        help="|q| = |k| = sqrt(dim) (unit RMS, default) or 1 (near-uniform softmax)")
    parser.add_argument("--images", type=int, default=d.images, help="images in the decay test (default 3)")
    parser.add_argument("--text-lengths", type=_int_list, default=d.text_lengths,
                        help="text tokens after the images in the decay test (default 8,64,256,1024,4096)")
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show the progress bar (default: on a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")


def main_diagnose(args: argparse.Namespace) -> int:
    try:
        settings = DiagnoseSettings(grid=args.grid, dim=args.dim, base=args.base, draws=args.draws,
                                    seed=args.seed, qk=args.qk, norm=args.norm, images=args.images,
                                    text_lengths=tuple(args.text_lengths))
        schemes = scheme_by_key([k.strip() for k in args.schemes.split(",") if k.strip()])
    except ValueError as exc:
        print(f"c2rope diagnose: error: {exc}", file=sys.stderr)
        return 2
    run_diagnose(args.out, settings, schemes, progress=args.progress)
    return 0
