"""The panels the layout pictures share (scripts/anyres_picture.py, tiles_picture.py,
idefics3_picture.py): one grid's tokens with their rings and centred coordinates, and
the mask of the prompt with each grid's block outlined."""
import matplotlib.pyplot as plt


def draw_rings(axis, layout, start, h, w, newline_column=False):
    """The h x w grid of tokens that starts at `start` (row 0 of `layout`): each token
    shaded and labelled by its ring, with its centred (cx, cy) below. newline_column:
    the right column is LLaVA-NeXT's newline token (labelled in red)."""
    rings = layout.ring[0, start:start + h * w].view(h, w)
    axis.imshow(rings.numpy(), cmap="Blues_r", vmin=-1, vmax=int(rings.max()) + 2)
    for r in range(h):
        for c in range(w):
            k = start + r * w + c
            cx, cy = layout.cx2[0, k].item() / 2, layout.cy2[0, k].item() / 2
            newline = newline_column and c == w - 1
            label = f"newline\nring {int(rings[r, c])}" if newline else f"ring {int(rings[r, c])}"
            axis.text(c, r - 0.15, label, ha="center", va="center", fontsize=7,
                      color="tab:red" if newline else "black")
            axis.text(c, r + 0.25, f"({cx:g}, {cy:g})", ha="center", fontsize=6, color="0.3")


def draw_mask(axis, mask, blocks, colours, title):
    """The [S, S] boolean mask (dark = attends), each grid's block, given as (start,
    tokens), outlined in its colour."""
    axis.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1.6)
    for (start, size), colour in zip(blocks, colours):
        axis.add_patch(plt.Rectangle((start - 0.5, start - 0.5), size, size, fill=False, edgecolor=colour, lw=1.5))
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("key")
    axis.set_ylabel("query")
