"""Draws docs/img/idefics3_layout.png: how c2rope lays out one Idefics3 / SmolVLM image
split into 1 x 2 tiles plus its global image (tiles of 3x3 tokens here; 13x13 on
Idefics3-8B, 9x9 on SmolVLM2-2.2B), with the separator tokens as text, and the Chebyshev
mask of that prompt. Run from the repo root: PYTHONPATH=. python scripts/idefics3_picture.py"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from c2rope import C2RoPEConfig, VisualLayout, chebyshev_mask  # noqa: E402
from layout_panels import draw_mask, draw_rings  # noqa: E402  (scripts/, beside this file)

SIDE = 3
# The prompt as the processor writes it (names of the separator tokens; None = an image token run).
PIECES = ["text", "text", "<fake>", "<row_1_col_1>", None, "<fake>", "<row_1_col_2>", None, "\\n", "\\n",
          "<fake>", "<global-img>", None, "<fake>", "text", "text"]
TILE_NAMES = ["tile row 1, col 1", "tile row 1, col 2", "global image"]

tokens, spans = [], []
for piece in PIECES:
    if piece is None:
        spans.append((len(tokens), SIDE, SIDE))
        tokens += [f"T{len(spans)}"] * SIDE * SIDE
    else:
        tokens.append(piece)
seq = len(tokens)
layout = VisualLayout.from_spans([spans], seq)
mask = chebyshev_mask(layout, C2RoPEConfig(), dtype=torch.bool)[0, 0]
colours = ["tab:blue", "tab:green", "tab:purple"]

figure = plt.figure(figsize=(13, 6.2))
strip = figure.add_axes([0.03, 0.78, 0.94, 0.12])
for k, name in enumerate(tokens):
    tile = int(name[1:]) - 1 if name.startswith("T") and name[1:].isdigit() else None
    colour = colours[tile] if tile is not None else "0.9"
    strip.add_patch(plt.Rectangle((k, 0), 1, 1, facecolor=colour, edgecolor="white"))
    if tile is None:
        strip.text(k + 0.5, 0.5, name, rotation=90, ha="center", va="center", fontsize=7)
for (start, h, w), name, colour in zip(spans, TILE_NAMES, colours):
    strip.text(start + h * w / 2, 1.15, f"{name}: {h}x{w} tokens {start}..{start + h * w - 1}", ha="center",
               fontsize=8, color=colour)
strip.set_xlim(0, seq)
strip.set_ylim(0, 1.5)
strip.axis("off")
strip.set_title("the prompt, token by token: image tokens (coloured) in runs of one tile each; the fake, row/column, "
                "global-image and newline tokens are text", fontsize=9, pad=14)

for index, ((start, h, w), name, colour) in enumerate(zip(spans, TILE_NAMES, colours)):
    axis = figure.add_axes([0.03 + 0.17 * index, 0.08, 0.15, 0.55])
    draw_rings(axis, layout, start, h, w)
    axis.set_title(f"{name}\nits own centre and rings", fontsize=9, color=colour)
    axis.set_xticks([])
    axis.set_yticks([])

draw_mask(figure.add_axes([0.55, 0.06, 0.42, 0.6]), mask, [(start, h * w) for start, h, w in spans], colours,
          "mask (dark = attends): Chebyshev inside each tile, causal between tiles and text")
figure.savefig("docs/img/idefics3_layout.png", dpi=110)
print("wrote docs/img/idefics3_layout.png")
