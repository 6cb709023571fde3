"""Draws docs/img/anyres_layout.png: how c2rope lays out one LLaVA-NeXT anyres image (a
4x4 base view, then a 3x6 unpadded high-res grid whose rows end in a newline token) and
the Chebyshev mask of that prompt. Run from the repo root: PYTHONPATH=. python scripts/anyres_picture.py"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from c2rope import C2RoPEConfig, VisualLayout, chebyshev_mask  # noqa: E402
from layout_panels import draw_mask, draw_rings  # noqa: E402  (scripts/, beside this file)

TEXT_BEFORE, TEXT_AFTER = 3, 3
BASE, HIGH = (4, 4), (3, 6 + 1)  # the high-res grid with its newline column
base_start = TEXT_BEFORE
high_start = base_start + BASE[0] * BASE[1]
seq = high_start + HIGH[0] * HIGH[1] + TEXT_AFTER
layout = VisualLayout.from_spans([[(base_start, *BASE), (high_start, *HIGH)]], seq)
config = C2RoPEConfig()
mask = chebyshev_mask(layout, config, dtype=torch.bool)[0, 0]

figure, axes = plt.subplots(1, 3, figsize=(13, 4.4), gridspec_kw={"width_ratios": [0.8, 1.2, 1.3]})
for axis, (start, (h, w), title) in zip(axes[:2], [(base_start, BASE, "base view (4x4)"),
                                                    (high_start, HIGH, "high-res, unpadded (3x6) + newline column")]):
    draw_rings(axis, layout, start, h, w, newline_column=title.startswith("high"))
    if title.startswith("high"):
        axis.add_patch(plt.Rectangle((w - 1.5, -0.5), 1, h, fill=False, edgecolor="tab:red", lw=2))
    axis.set_title(title + f"\nits own centre and rings; tokens {start}..{start + h * w - 1}", fontsize=9)
    axis.set_xticks(range(w))
    axis.set_yticks(range(h))
grids = [(base_start, BASE, "base"), (high_start, HIGH, "high-res")]
draw_mask(axes[2], mask, [(start, h * w) for start, (h, w), _ in grids], ["tab:red"] * len(grids),
          "mask (dark = attends): Chebyshev inside each grid,\ncausal between the grids and text")
for start, (h, w), name in grids:
    axes[2].text(start + h * w / 2, start - 1.2, name, ha="center", color="tab:red", fontsize=8)
figure.suptitle("one anyres image = two grids, each with its own centre and rings; (cx, cy) = centred "
                "coordinates; the image_newline token of a row is the grid's right column", fontsize=9)
figure.tight_layout()
figure.savefig("docs/img/anyres_layout.png", dpi=110)
print("wrote docs/img/anyres_layout.png")
