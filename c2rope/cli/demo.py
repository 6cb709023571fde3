"""`python -m c2rope demo`: C2RoPE on a synthetic multi-view prompt, nothing downloaded.

The prompt is LLaVA-like: text, two 24x24 images back to back (one run of 1152 image
tokens that the layout splits into two images), text. The demo prints the triplet
positions and the Chebyshev mask in numbers, rotates random q/k with the fused kernel
(checked against the float64 reference), and writes two PNGs (matplotlib, see
demo_figures.py): the mask, and the Chebyshev rings over the (x, y) grid of each image.
Without matplotlib (a plain `pip install c2rope`) it prints everything and says how to
get the pictures.
"""
from __future__ import annotations

import dataclasses

import os
import sys
import time
from typing import Dict, Optional, TextIO

import torch

from c2rope.config import C2RoPEConfig
from c2rope.layout import VisualLayout
from c2rope.mask import chebyshev_mask
from c2rope.positions import build_position_ids, next_temporal_index

from .plotting import MissingPlotsExtra, require_matplotlib, save

IMAGE_TOKEN_ID = 32000  # LLaVA-1.5's <image>
GRID = (24, 24)
TEXT_BEFORE, TEXT_AFTER = 6, 9


def synthetic_prompt(generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """input_ids [1, S]: text, two 24x24 images, text (random text ids below 32000)."""
    h, w = GRID
    text = torch.randint(1, 32000, (TEXT_BEFORE + TEXT_AFTER,), generator=generator)
    image = torch.full((2 * h * w,), IMAGE_TOKEN_ID)
    return torch.cat([text[:TEXT_BEFORE], image, text[TEXT_BEFORE:]]).unsqueeze(0)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _describe_positions(layout, pos, config, out: TextIO) -> None:
    (s0, h, w), (s1, _, _) = layout.spans[0]
    picks = [
        ("first text token", 0),
        ("last text before the images", s0 - 1),
        ("image 1, top-left patch", s0),
        ("image 1, centre patch (row 11, col 11)", s0 + 11 * w + 11),
        ("image 1, bottom-right patch", s0 + h * w - 1),
        ("image 2, top-left patch", s1),
        ("first text after the images", s1 + h * w),
        ("last token", layout.seq_len - 1),
    ]
    print(f"  {'token':<42} {'index':>5}  (m, x, y)", file=out)
    for name, index in picks:
        print(f"  {name:<42} {index:>5}  {_fmt(pos[0, index].tolist())}", file=out)
    span = pos[0, s0 : s0 + h * w]
    print(
        f"  image 1 spans m in [{span[:, 0].min():g}, {span[:, 0].max():g}], "
        f"x in [{span[:, 1].min():g}, {span[:, 1].max():g}], y in [{span[:, 2].min():g}, {span[:, 2].max():g}]",
        file=out,
    )
    nxt = int(next_temporal_index(layout, config)[0])
    paper = C2RoPEConfig.paper_code()
    nxt_paper = int(next_temporal_index(layout, paper)[0])
    print(
        f"  next generated token gets m = {nxt} (paper_code(), concentric temporal index: {nxt_paper})",
        file=out,
    )


def _describe_mask(layout, mask, mask_name: str, out: TextIO) -> None:
    allowed = mask[0, 0]
    seq = layout.seq_len
    causal_pairs = seq * (seq + 1) // 2
    (s0, h, w), _ = layout.spans[0]
    ring = layout.ring[0]
    n_rings = int(layout.num_rings[0, s0])
    sizes = torch.bincount(ring[s0 : s0 + h * w].long(), minlength=n_rings).tolist()
    print(f"  shape {tuple(mask.shape)}, dtype {mask.dtype}", file=out)
    print(
        f"  allowed pairs: {int(allowed.sum()):,} (plain causal: {causal_pairs:,}; "
        f"{int(allowed.sum()) / causal_pairs:.3f}x)",
        file=out,
    )
    print(f"  rings per image: {n_rings}; tokens per ring (inner -> outer): {sizes}", file=out)
    rule = {"outward": "own ring and those nearer the centre", "inward": "own ring and those farther out",
            "causal": "causal: varies along the ring, first token shown"}[mask_name]
    print(f"  keys visible inside image 1 to a token of ring r ({rule}):", file=out)
    cells = []
    for r in range(n_rings):
        token = s0 + int((ring[s0 : s0 + h * w] == r).nonzero()[0])
        inside = int(allowed[token, s0 : s0 + h * w].sum())
        cells.append(f"r{r}:{inside}")
    print("    " + "  ".join(cells), file=out)
    every_row = bool(allowed.any(dim=-1).all())
    print(f"  every query row allows at least one key: {every_row}", file=out)


def _rotate(pos, config, out: TextIO) -> None:
    from c2rope.reference import rotary_ref
    from c2rope.rotary import C2RotaryEmbedding, apply_rotary_pos_emb

    heads, head_dim = 8, 128
    seq = pos.shape[1]
    rope = C2RotaryEmbedding(dim=head_dim, config=config)
    q = torch.randn(1, heads, seq, head_dim)
    k = torch.randn(1, 2, seq, head_dim)  # GQA: 8 query heads, 2 key heads
    cos, sin = rope(q, pos)
    start = time.perf_counter()
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    elapsed = time.perf_counter() - start
    q_ref, k_ref = rotary_ref(q.double(), k.double(), cos.double(), sin.double())
    err = max((q_rot.double() - q_ref).abs().max().item(), (k_rot.double() - k_ref).abs().max().item())
    print(
        f"  C2RotaryEmbedding(dim={head_dim}): d_temporal={rope.d_temporal}, d_spatial={rope.d_spatial} "
        f"({config.spatial_layout}); cos/sin {tuple(cos.shape)}",
        file=out,
    )
    print(
        f"  apply_rotary_pos_emb on q {tuple(q.shape)}, k {tuple(k.shape)} (fused kernel): "
        f"{elapsed * 1e3:.2f} ms, max |error| vs float64 reference {err:.2e}",
        file=out,
    )


def run_demo(out_dir: str = "c2rope_demo", config: Optional[C2RoPEConfig] = None,
             out: Optional[TextIO] = None, seed: int = 0) -> Dict[str, str]:
    """Run the demo, printing to `out` (default stdout); returns the PNG paths ({} when
    matplotlib, the `plots` extra, is missing: everything else still runs and is printed,
    and the output says how to get the pictures)."""
    out = out if out is not None else sys.stdout
    config = config or C2RoPEConfig()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    input_ids = synthetic_prompt(generator)
    layout = VisualLayout.from_input_ids(input_ids, IMAGE_TOKEN_ID, grid=GRID)
    pos = build_position_ids(layout, config)
    mask = chebyshev_mask(layout, config)

    print("c2rope demo: text, two 24x24 images, text", file=out)
    print(f"  config: {config}", file=out)
    print(f"  {layout}", file=out)
    print("\nTriplet positions (m, x, y):", file=out)
    _describe_positions(layout, pos, config, out)
    print(f"\nChebyshev mask (mask={config.mask!r}):", file=out)
    _describe_mask(layout, mask, config.mask, out)
    print("\nRotary embedding:", file=out)
    _rotate(pos, config, out)

    try:
        require_matplotlib("python -m c2rope demo")
    except MissingPlotsExtra as exc:
        print(f"\nNo pictures: {exc}", file=out)
        return {}
    from .demo_figures import mask_figure, rings_figure

    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "mask": save(mask_figure(layout, mask, config.mask), os.path.join(out_dir, "mask.png")),
        "rings": save(rings_figure(layout), os.path.join(out_dir, "rings.png")),
    }
    print("\nWrote:", file=out)
    print(f"  {paths['mask']}  ({layout.seq_len}x{layout.seq_len} mask, white = may attend; "
          "image 1 sorted by ring beside it)", file=out)
    print(f"  {paths['rings']}  (Chebyshev rings of each image over its (x, y) grid, one colour per ring)",
          file=out)
    return paths


def add_arguments(parser) -> None:
    """The options of `python -m c2rope demo`."""
    parser.add_argument("--out", default="c2rope_demo", help="directory for the PNGs (default: ./c2rope_demo)")
    parser.add_argument("--config", default="default",
                        help="C2RoPEConfig.from_name name: default, seed, paper, or <temporal>-<band>[-<mask>] "
                             "such as shared-spread (default: default)")
    parser.add_argument("--mask", default=None, choices=("outward", "inward", "causal"),
                        help="mask inside images (default: the config's)")
    parser.add_argument("--paper-code", action="store_true",
                        help="use C2RoPEConfig.paper_code() (merged, concentric, inward, blocked)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random text ids and q/k")


def run(args) -> int:
    try:
        config = C2RoPEConfig.from_name("paper" if args.paper_code else args.config)
    except ValueError as exc:
        print(f"c2rope demo: error: --config: {exc}", file=sys.stderr)
        return 2
    if args.mask is not None:
        config = dataclasses.replace(config, mask=args.mask)
    run_demo(out_dir=args.out, config=config, seed=args.seed)
    return 0
