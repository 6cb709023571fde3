"""Random visual layouts shared by the layout, positions and mask tests."""
import random

import torch

from c2rope import VisualLayout


def random_layout(batch=3, max_images=3, max_side=7, min_tail=1, device="cpu"):
    """Random spans with text gaps (several grids per row) and random left or right
    padding. Each row ends with min_tail..min_tail+2 text tokens (0 lets a row end
    inside an image)."""
    rows, lengths = [], []
    for _ in range(batch):
        pos, spans = random.randint(0, 3), []
        for _ in range(random.randint(0, max_images)):
            h, w = random.randint(1, max_side), random.randint(1, max_side)
            spans.append((pos, h, w))
            pos += h * w + random.randint(0, 3)
        rows.append(spans)
        lengths.append(pos + random.randint(min_tail, min_tail + 2))
    seq = max(lengths)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for b, (spans, n) in enumerate(zip(rows, lengths)):
        if random.random() < 0.5:  # left padding: shift the row right
            shift = seq - n
            rows[b] = [(s + shift, h, w) for s, h, w in spans]
            mask[b, shift:] = 1
        else:
            mask[b, :n] = 1
    return VisualLayout.from_spans(rows, seq, attention_mask=mask.to(device))
