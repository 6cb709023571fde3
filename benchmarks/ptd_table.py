"""Per-Token Distance (PTD) of each position scheme on the setup of the Circle-RoPE
paper's Table 1: one 3x3 image (9 tokens) followed by 5 text tokens.

    python benchmarks/ptd_table.py            # markdown table
    python benchmarks/ptd_table.py --text-before

Positions come from the library itself: 1D RoPE is the raster index; M-RoPE and
Circle-RoPE come from c2rope.mrope.mrope_position_ids (Qwen2-VL's get_rope_index rule,
a 6x6 patch grid merged 2x2 into 3x3); C2RoPE triplets (m, x, y) from
c2rope.build_position_ids on a c2rope.VisualLayout. PTD (c2rope.per_token_distance)
treats every position axis alike: it is a geometric property of the positions, not of
how many frequency slots each axis gets.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "c2rope")):
    sys.path.insert(0, _CHECKOUT)  # measure this source tree, not another installed c2rope

import c2rope  # noqa: E402
from c2rope.circle import CircleRoPEConfig  # noqa: E402
from c2rope.mrope import mrope_position_ids  # noqa: E402

IMAGE_H = IMAGE_W = 3
N_TEXT = 5
PAPER = {"1D RoPE (raster)": "2.22", "Circle-RoPE (alpha 0.5, R 10)": "0"}


def _split(positions: torch.Tensor, is_image: torch.Tensor):
    """[S, A] positions -> (image [9, A], text [5, A])."""
    return positions[is_image], positions[~is_image]


def schemes(text_before: bool):
    """(name, image positions, text positions) for every scheme."""
    n_image = IMAGE_H * IMAGE_W
    is_image = torch.zeros(n_image + N_TEXT, dtype=torch.bool)
    image_start = N_TEXT if text_before else 0
    is_image[image_start:image_start + n_image] = True
    seq_len = is_image.numel()

    rows = []
    raster = torch.arange(seq_len, dtype=torch.float32).view(-1, 1)
    rows.append(("1D RoPE (raster)", *_split(raster, is_image)))

    mm = is_image.long().view(1, -1)
    grid = torch.tensor([[1, 2 * IMAGE_H, 2 * IMAGE_W]])  # before Qwen's 2x2 spatial merge
    for name, circle in (
        ("M-RoPE (Qwen2-VL)", None),
        ("Circle-RoPE (alpha 0.5, R 10)", CircleRoPEConfig()),
        ("Circle-RoPE (alpha 0.5, R auto)", CircleRoPEConfig(radius="auto")),
    ):
        pos, _ = mrope_position_ids(mm_token_type_ids=mm, image_grid_thw=grid, circle=circle)
        rows.append((name, *_split(pos[:, 0].T, is_image)))

    layout = c2rope.VisualLayout.from_spans([[(image_start, IMAGE_H, IMAGE_W)]], seq_len)
    for name, cfg in (
        ("C2RoPE default (m, x, y)", c2rope.C2RoPEConfig()),
        ("C2RoPE text_spatial='zero'", c2rope.C2RoPEConfig(text_spatial="zero")),
        ("C2RoPE paper code", c2rope.C2RoPEConfig.paper_code()),
    ):
        pos = c2rope.build_position_ids(layout, cfg)[0]
        rows.append((name, *_split(pos, is_image)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-before", action="store_true", help="put the 5 text tokens before the image")
    args = parser.parse_args()
    where = "before" if args.text_before else "after"
    print(f"PTD, one {IMAGE_H}x{IMAGE_W} image with {N_TEXT} text tokens {where} it\n")
    print("| scheme | axes | PTD | paper |")
    print("|---|---|---|---|")
    for name, image, text in schemes(args.text_before):
        ptd = c2rope.per_token_distance(image, text)
        print(f"| {name} | {image.shape[1]} | {ptd:.4f} | {PAPER.get(name, '')} |")


if __name__ == "__main__":
    main()
