"""Triplet positions (SPEC section 3) token by token from the spans: slow, independent
of the vectorised c2rope.positions, for tests."""
import torch

__all__ = ["position_ids_ref"]


def _ring_ranks(h, w):
    """Chebyshev radius and its dense rank for every cell, innermost = 0."""
    radius = {}
    for r in range(h):
        for c in range(w):
            radius[r, c] = max(abs(c - (w - 1) / 2), abs((h - 1) / 2 - r))
    distinct = sorted(set(radius.values()))
    return {cell: distinct.index(value) for cell, value in radius.items()}, len(distinct)


def position_ids_ref(spans, valid, config):
    """float32 [B, S, 3] for spans[b] = [(start, H, W), ...] and valid [B, S] (bool)."""
    batch, seq = valid.shape
    out = torch.zeros(batch, seq, 3, dtype=torch.float64)
    for b in range(batch):
        images = {start: (h, w) for start, h, w in spans[b]}
        m, s = 0, 0
        while s < seq:
            if not valid[b, s]:
                out[b, s] = torch.tensor([1.0, 0.0, 0.0])
                s += 1
                continue
            if s not in images:
                t = float(m) if config.text_spatial == "temporal" else 0.0
                out[b, s] = torch.tensor([float(m), t, t])
                m, s = m + 1, s + 1
                continue
            h, w = images[s]
            ranks, n_rings = _ring_ranks(h, w)
            tokens = []
            for k in range(h * w):
                r, c = divmod(k, w)
                cx, cy = c - (w - 1) / 2, (h - 1) / 2 - r
                if config.coords == "merged":
                    cx, cy = float(int(cx)), float(int(cy))
                tm = m + k if config.temporal == "raster" else m + n_rings - 1 - ranks[r, c]
                tokens.append((tm, cx, cy))
            anchor = sum(t[0] for t in tokens) / len(tokens) if config.text_spatial == "temporal" else 0.0
            for k, (tm, cx, cy) in enumerate(tokens):
                out[b, s + k] = torch.tensor([float(tm), anchor + cx, anchor + cy])
            m += h * w if config.temporal == "raster" else n_rings
            s += h * w
    return out.to(torch.float32)
