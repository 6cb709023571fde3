"""Draws docs/img/tiles_layout.png: how c2rope lays out one InternVL image of three tiles
(two crops and the thumbnail, 3x3 tokens each here; 16x16 on InternVL3.5) between its
<img> and </img> tokens, and the mask of that prompt. Run from the repo root:
PYTHONPATH=. python scripts/tiles_picture.py"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from c2rope import C2RoPEConfig, VisualLayout, chebyshev_mask  # noqa: E402
from layout_panels import draw_mask, draw_rings  # noqa: E402  (scripts/, beside this file)

SIDE = 3
TILES = ("tile 1", "tile 2", "thumbnail")
TEXT_BEFORE = 2  # then <img>
first = TEXT_BEFORE + 1
starts = [first + i * SIDE * SIDE for i in range(len(TILES))]
end_token = starts[-1] + SIDE * SIDE  # </img>
seq = end_token + 1 + 2
layout = VisualLayout.from_spans([[(s, SIDE, SIDE) for s in starts]], seq)
mask = chebyshev_mask(layout, C2RoPEConfig(), dtype=torch.bool)[0, 0]

figure = plt.figure(figsize=(13, 5.6))
grid = figure.add_gridspec(2, 4, height_ratios=[0.35, 1], width_ratios=[1, 1, 1, 1.6])
strip = figure.add_subplot(grid[0, :])
labels = ["text"] * TEXT_BEFORE + ["<img>"] + [f"t{1 + (k - first) // (SIDE * SIDE)}"
                                              for k in range(first, end_token)] + ["</img>", "text", "text"]
colours = {"text": "0.85", "<img>": "tab:orange", "</img>": "tab:orange"}
for k, label in enumerate(labels):
    strip.add_patch(plt.Rectangle((k, 0), 0.95, 1, color=colours.get(label, "tab:blue"), alpha=0.7))
    strip.text(k + 0.47, 0.5, label, ha="center", va="center", fontsize=6, rotation=90 if "img" in label else 0)
strip.set_xlim(0, seq)
strip.set_ylim(0, 1)
strip.axis("off")
strip.set_title("the prompt: <img> and </img> are text (orange); every tile's tokens (blue) are one grid", fontsize=9)
for index, (start, name) in enumerate(zip(starts, TILES)):
    axis = figure.add_subplot(grid[1, index])
    draw_rings(axis, layout, start, SIDE, SIDE)
    axis.set_title(f"{name}: its own centre and rings\ntokens {start}..{start + SIDE * SIDE - 1}", fontsize=9)
    axis.set_xticks(range(SIDE))
    axis.set_yticks(range(SIDE))
draw_mask(figure.add_subplot(grid[1, 3]), mask, [(start, SIDE * SIDE) for start in starts], ["tab:red"] * len(starts),
          "mask (dark = attends): Chebyshev inside each tile,\ncausal between tiles and text")
figure.tight_layout()
figure.savefig("docs/img/tiles_layout.png", dpi=110)
print("wrote docs/img/tiles_layout.png")
