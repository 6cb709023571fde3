"""`python -m c2rope diagnose`: what each positional scheme does to attention, measured.

On synthetic prompts (nothing downloaded), for 1D RoPE, C2RoPE (seed defaults, the same
positions under a causal mask, the paper's released code), M-RoPE and Circle-RoPE, it
computes pure positional attention (c2rope.cli.diagnostics.attention: the softmax of the
scores the rotary encoding alone induces between identical random q/k, averaged over
draws, under each scheme's own mask) and reports:

- spatial continuity: attention to vertical vs horizontal neighbours in a 24x24 image;
- Chebyshev causality: ring x ring matrices of what the mask allows and what is attended;
- long-range decay: attention of the last token on the first of N images as text grows;
- cross-modal bias: Per-Token Distance (the Circle-RoPE paper's setup and 24x24).

It writes a markdown report (diagnostics/report.py) and PNG heat maps (matplotlib,
diagnostics/figures.py) and prints where. Numbers are reported as measured, including
where a scheme looks bad.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import torch

from .diagnostics.attention import NORMS, QK_MODES, default_inv_freq, qk_weights
from .diagnostics.figures import continuity_figure, decay_figure, rings_figure
from .diagnostics.measures import Probe, continuity, decay, image_attention, ptd, ring_causality
from .diagnostics.progress import Progress
from .diagnostics.report import markdown_report, summary_lines
from .diagnostics.schemes import SCHEME_KEYS, Scheme, default_schemes, scheme_by_key
from .plotting import require_matplotlib, save

__all__ = ["DiagnoseSettings", "run_diagnose", "add_arguments", "run"]


@dataclasses.dataclass(frozen=True)
class DiagnoseSettings:
    """grid: the image of the continuity / ring / PTD tests; dim, base: rotary head dim
    and base (HF default frequencies); draws: random q/k directions averaged; qk, norm:
    see c2rope.cli.diagnostics.attention; images, text_lengths: the decay test (N images
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


def _write_pngs(out_dir: str, schemes: Sequence[Scheme], results: Dict[str, Dict],
                text_lengths: Sequence[int]) -> Dict[str, str]:
    paths = {}
    for scheme in schemes:
        result = results[scheme.key]
        for kind, figure in (("continuity", continuity_figure(scheme, result["continuity"])),
                             ("rings", rings_figure(scheme, result["rings"]))):
            name = f"{kind}_{scheme.key}"
            paths[name] = save(figure, os.path.join(out_dir, name + ".png"))
    paths["decay"] = save(decay_figure(schemes, results, text_lengths), os.path.join(out_dir, "decay.png"))
    return paths


def run_diagnose(out_dir: str = "c2rope_diagnose", settings: Optional[DiagnoseSettings] = None,
                 schemes: Optional[Sequence[Scheme]] = None, out: Optional[TextIO] = None,
                 progress: Optional[bool] = None) -> Dict:
    """Run every measurement, write `report.md` and the PNGs to out_dir, print a summary
    and the paths to `out` (default stdout). progress: None = bar on a terminal only.
    Returns {"results": per scheme key, "paths": name -> file, "report": path}.
    Raises MissingPlotsExtra (an ImportError) before measuring if matplotlib is missing."""
    require_matplotlib("python -m c2rope diagnose")
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
    report = markdown_report(settings, schemes, results, paths, time.perf_counter() - start)
    report_path = os.path.join(out_dir, "report.md")
    with open(report_path, "w") as f:
        f.write(report)
    print("c2rope diagnose: pure positional attention "
          f"(dim {settings.dim}, {settings.draws} draws, {settings.grid[0]}x{settings.grid[1]} image)", file=out)
    print("  v/h: vertical/horizontal neighbour attention (1 = no column break); farther: mass on outer "
          "rings;", file=out)
    print(f"  img1@{settings.text_lengths[-1]}: first image's attention vs uniform after "
          f"{settings.text_lengths[-1]} text tokens; PTD: paper's 3x3 + 5 text setup", file=out)
    for line in summary_lines(schemes, results, settings):
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
