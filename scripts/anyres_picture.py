"""Draws docs/img/anyres_layout.png: how c2rope lays out one LLaVA-NeXT anyres image (a
4x4 base view, then a 3x6 unpadded high-res grid whose rows end in a newline token) and
the Chebyshev mask of that prompt. Run from the repo root: PYTHONPATH=. python scripts/anyres_picture.py"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from c2rope import C2RoPEConfig, VisualLayout, chebyshev_mask  # noqa: E402

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
    rings = layout.ring[0, start:start + h * w].view(h, w)
    axis.imshow(rings.numpy(), cmap="Blues_r", vmin=-1, vmax=int(rings.max()) + 2)
    for r in range(h):
        for c in range(w):
            k = start + r * w + c
            cx, cy = layout.cx2[0, k].item() / 2, layout.cy2[0, k].item() / 2
            newline = title.startswith("high") and c == w - 1
            label = f"newline\nring {int(rings[r, c])}" if newline else f"ring {int(rings[r, c])}"
            axis.text(c, r - 0.15, label, ha="center", va="center", fontsize=7,
                      color="tab:red" if newline else "black")
            axis.text(c, r + 0.25, f"({cx:g}, {cy:g})", ha="center", fontsize=6, color="0.3")
    if title.startswith("high"):
        axis.add_patch(plt.Rectangle((w - 1.5, -0.5), 1, h, fill=False, edgecolor="tab:red", lw=2))
    axis.set_title(title + f"\nits own centre and rings; tokens {start}..{start + h * w - 1}", fontsize=9)
    axis.set_xticks(range(w))
    axis.set_yticks(range(h))
right = axes[2]
right.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1.6)
for start, (h, w), name in [(base_start, BASE, "base"), (high_start, HIGH, "high-res")]:
    size = h * w
    right.add_patch(plt.Rectangle((start - 0.5, start - 0.5), size, size, fill=False, edgecolor="tab:red", lw=1.5))
    right.text(start + size / 2, start - 1.2, name, ha="center", color="tab:red", fontsize=8)
right.set_title("mask (dark = attends): Chebyshev inside each grid,\ncausal between the grids and text", fontsize=9)
right.set_xlabel("key")
right.set_ylabel("query")
figure.suptitle("one anyres image = two grids, each with its own centre and rings; (cx, cy) = centred "
                "coordinates; the image_newline token of a row is the grid's right column", fontsize=9)
figure.tight_layout()
figure.savefig("docs/img/anyres_layout.png", dpi=110)
print("wrote docs/img/anyres_layout.png")
