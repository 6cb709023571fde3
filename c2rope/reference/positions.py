"""Triplet positions (docs/design.md §3) token by token from the spans: slow, independent
of the vectorised c2rope.positions, for tests."""
import torch

__all__ = ["position_ids_ref", "next_temporal_index_ref"]


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
    return _walk(spans, valid, config)[0].to(torch.float32)


def next_temporal_index_ref(spans, valid, config):
    """int64 [B]: the m a token appended to each row would get."""
    return torch.tensor(_walk(spans, valid, config)[1], dtype=torch.int64)


def _walk(spans, valid, config):
    """(float64 positions [B, S, 3], the next m of every row)."""
    batch, seq = valid.shape
    out = torch.zeros(batch, seq, 3, dtype=torch.float64)
    next_m = []
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
            coords = []
            for k in range(h * w):
                r, c = divmod(k, w)
                cx, cy = c - (w - 1) / 2, (h - 1) / 2 - r
                if config.coords == "merged":
                    cx, cy = float(int(cx)), float(int(cy))
                coords.append((r, c, cx, cy))
            # shared: one m, the image's centre, so its components span [m, m + 2 * half]
            half = max(max(abs(cx), abs(cy)) for _, _, cx, cy in coords)
            tokens = []
            for k, (r, c, cx, cy) in enumerate(coords):
                if config.temporal == "raster":
                    tm = m + k
                elif config.temporal == "concentric":
                    tm = m + n_rings - 1 - ranks[r, c]
                else:
                    tm = m + half
                tokens.append((tm, cx, cy))
            anchor = sum(t[0] for t in tokens) / len(tokens) if config.text_spatial == "temporal" else 0.0
            for k, (tm, cx, cy) in enumerate(tokens):
                out[b, s + k] = torch.tensor([float(tm), anchor + cx, anchor + cy])
            m += {"raster": h * w, "concentric": n_rings, "shared": int(2 * half) + 1}[config.temporal]
            s += h * w
        next_m.append(m)
    return out, next_m
