"""VisualLayout: where the images sit in each batch row (docs/design.md §2).

A layout is built once per batch, from image-token runs in `input_ids` or from explicit
spans, and carries the per-token tensors that positions, masks and kernels read:

    valid       bool  [B, S]  True for a real token, False for padding
    image_id    int32 [B, S]  -1 for text, else the image's index within its row
    ring        int32 [B, S]  Chebyshev ring rank (0 = innermost), -1 for text
    num_rings   int32 [B, S]  rings of the token's image (12 for 24x24), 0 for text
    row, col    int32 [B, S]  grid row / column of an image token, -1 for text
    cx2, cy2    int32 [B, S]  twice the centred coordinates (exact integers), 0 for text:
                              cx = cx2 / 2 = col - (W-1)/2, cy = cy2 / 2 = (H-1)/2 - row
    image_start int64 [B, S]  sequence index of the first token of the token's image
                              (-1 for text)

Images are contiguous raster-order spans `(start, H, W)`; `spans[b]` lists a row's
spans in sequence order (image_id counts them from 0).
"""
from __future__ import annotations

import functools
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch

Span = Tuple[int, int, int]
Grid = Tuple[int, int]

__all__ = ["VisualLayout", "grid_rings"]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_grid(grid, name: str) -> Grid:
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise ValueError(f"{name} must be a pair (H, W) of positive ints, got {grid!r}")
    h, w = grid
    if not (_is_int(h) and _is_int(w)):
        raise TypeError(f"{name} must be a pair (H, W) of ints, got {grid!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be a pair (H, W) of positive ints, got {grid!r}")
    return int(h), int(w)


@functools.lru_cache(maxsize=64)
def _grid_template(h: int, w: int):
    """Per-token values of one H x W image in raster order (CPU tensors, cached)."""
    rows = torch.arange(h, dtype=torch.int32).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.int32).repeat(h)
    cx2 = 2 * cols - (w - 1)
    cy2 = (h - 1) - 2 * rows
    # Chebyshev radius (doubled); the ring rank is its dense rank among the grid's
    # distinct radii, so 0 is the innermost ring for every grid shape.
    radius2 = torch.maximum(cx2.abs(), cy2.abs())
    distinct, rank = torch.unique(radius2, sorted=True, return_inverse=True)
    return rows, cols, cx2, cy2, rank.to(torch.int32), int(distinct.numel())


def grid_rings(h: int, w: int) -> torch.Tensor:
    """Ring rank (0 = innermost) of every cell of an H x W grid, int32 [H, W]."""
    h, w = _check_grid((h, w), "grid")
    return _grid_template(h, w)[4].view(h, w).clone()


def _check_attention_mask(attention_mask, shape, device, name="attention_mask") -> Optional[torch.Tensor]:
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(attention_mask.shape)}")
    if attention_mask.is_complex():
        raise TypeError(f"{name} must hold 0/1 values (bool, int or float), got {attention_mask.dtype}")
    if device is not None and attention_mask.device != torch.device(device):
        raise ValueError(f"{name} is on {attention_mask.device} but the ids are on {device}")
    if attention_mask.numel() and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1 (HF padding mask)")
    return attention_mask != 0


class VisualLayout:
    """Image spans per batch row plus the per-token tensors derived from them.

    Build with `from_input_ids` or `from_spans`; see the module docstring for the
    tensors. Layouts are immutable: `to` and `append_text` return new ones.
    """

    # The per-token tensors, all [B, S] on one device.
    _TENSORS = ("valid", "image_id", "ring", "num_rings", "row", "col", "cx2", "cy2", "image_start")

    def __init__(self, spans: Sequence[Sequence[Span]], seq_len: int, valid: torch.Tensor):
        # Trusted constructor: spans sorted, validated, non-overlapping, all valid tokens.
        self.spans: Tuple[Tuple[Span, ...], ...] = tuple(tuple(row) for row in spans)
        self.seq_len = int(seq_len)
        self.valid = valid
        batch, device = len(self.spans), valid.device
        shape = (batch, self.seq_len)

        def full(value, dtype):
            return torch.full(shape, value, dtype=dtype)

        image_id, ring, num_rings = full(-1, torch.int32), full(-1, torch.int32), full(0, torch.int32)
        row, col = full(-1, torch.int32), full(-1, torch.int32)
        cx2, cy2 = full(0, torch.int32), full(0, torch.int32)
        image_start = full(-1, torch.int64)
        for b, row_spans in enumerate(self.spans):
            for index, (start, h, w) in enumerate(row_spans):
                rows, cols, tx, ty, rank, n_rings = _grid_template(h, w)
                sl = slice(start, start + h * w)
                image_id[b, sl] = index
                ring[b, sl] = rank
                num_rings[b, sl] = n_rings
                row[b, sl], col[b, sl] = rows, cols
                cx2[b, sl], cy2[b, sl] = tx, ty
                image_start[b, sl] = start
        self.image_id = image_id.to(device)
        self.ring = ring.to(device)
        self.num_rings = num_rings.to(device)
        self.row, self.col = row.to(device), col.to(device)
        self.cx2, self.cy2 = cx2.to(device), cy2.to(device)
        self.image_start = image_start.to(device)

    # ---------------------------------------------------------------- builders

    @classmethod
    def from_spans(
        cls,
        spans: Sequence[Sequence[Span]],
        seq_len: int,
        attention_mask: Optional[torch.Tensor] = None,
        device: Union[str, torch.device, None] = None,
    ) -> "VisualLayout":
        """Layout from explicit image spans: `spans[b]` is a list of `(start, H, W)`,
        the H*W tokens of an image being consecutive from `start` in raster order.

        attention_mask: optional 0/1 [B, seq_len] (HF padding mask); spans must lie on
        valid tokens. device: where the layout's tensors live (default: the mask's
        device, else CPU).
        """
        if not _is_int(seq_len):
            raise TypeError(f"seq_len must be an int, got {type(seq_len).__name__}")
        if seq_len < 0:
            raise ValueError(f"seq_len must be >= 0, got {seq_len}")
        if isinstance(spans, torch.Tensor) or not isinstance(spans, (list, tuple)):
            raise TypeError("spans must be a list (one entry per batch row) of lists of (start, H, W)")
        batch = len(spans)
        if device is None:
            device = attention_mask.device if isinstance(attention_mask, torch.Tensor) else "cpu"
        device = torch.device(device)
        valid = _check_attention_mask(attention_mask, (batch, seq_len), device)
        if valid is None:
            valid = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        valid_cpu = valid.cpu()

        checked = []
        for b, row_spans in enumerate(spans):
            if isinstance(row_spans, torch.Tensor) or not isinstance(row_spans, (list, tuple)):
                raise TypeError(f"spans[{b}] must be a list of (start, H, W), got {type(row_spans).__name__}")
            row = []
            for i, span in enumerate(row_spans):
                if not isinstance(span, (list, tuple)) or len(span) != 3:
                    raise ValueError(f"spans[{b}][{i}] must be (start, H, W), got {span!r}")
                if not all(_is_int(v) for v in span):
                    raise TypeError(f"spans[{b}][{i}] must hold ints, got {span!r}")
                start, h, w = (int(v) for v in span)
                if h < 1 or w < 1:
                    raise ValueError(f"spans[{b}][{i}]: grid must be positive, got H={h}, W={w}")
                if start < 0 or start + h * w > seq_len:
                    raise ValueError(
                        f"spans[{b}][{i}] = {span!r} covers tokens [{start}, {start + h * w}) "
                        f"outside the sequence [0, {seq_len})"
                    )
                row.append((start, h, w))
            row.sort()
            for (s0, h0, w0), (s1, _, _) in zip(row, row[1:]):
                if s1 < s0 + h0 * w0:
                    raise ValueError(
                        f"spans[{b}]: image at {s1} overlaps the image [{s0}, {s0 + h0 * w0})"
                    )
            for start, h, w in row:
                if not bool(valid_cpu[b, start : start + h * w].all()):
                    raise ValueError(
                        f"spans[{b}]: image [{start}, {start + h * w}) covers padding "
                        "(attention_mask == 0)"
                    )
            checked.append(row)
        return cls(checked, seq_len, valid)

    @classmethod
    def from_input_ids(
        cls,
        input_ids: torch.Tensor,
        image_token_id: int,
        grid: Union[Grid, Sequence[Grid], torch.Tensor] = (24, 24),
        attention_mask: Optional[torch.Tensor] = None,
    ) -> "VisualLayout":
        """Layout from runs of `image_token_id` in `input_ids` [B, S].

        grid: one (H, W) for every image, or a list of (H, W), one per image in batch
        order (row 0's images first), like Qwen's image_grid_thw; a tensor [N, 2] works
        too. A run of consecutive image tokens longer than its grid holds several
        images back to back; a run that does not split exactly into grids is an error.
        Image tokens under attention_mask == 0 are padding, not images.
        """
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if not _is_int(image_token_id):
            raise TypeError(f"image_token_id must be an int, got {type(image_token_id).__name__}")
        grids = cls._parse_grids(grid)
        batch, seq_len = input_ids.shape
        valid = _check_attention_mask(attention_mask, (batch, seq_len), input_ids.device)
        if valid is None:
            valid = torch.ones(batch, seq_len, dtype=torch.bool, device=input_ids.device)

        is_image = ((input_ids == image_token_id) & valid).cpu()
        # Run boundaries: +1 where a run starts, -1 one past where it ends.
        edges = torch.diff(is_image.to(torch.int8), dim=1, prepend=torch.zeros(batch, 1, dtype=torch.int8),
                           append=torch.zeros(batch, 1, dtype=torch.int8))
        starts_b, starts_s = (edges == 1).nonzero(as_tuple=True)
        ends_s = (edges == -1).nonzero(as_tuple=True)[1]

        spans: List[List[Span]] = [[] for _ in range(batch)]
        next_grid = 0
        for b, start, end in zip(starts_b.tolist(), starts_s.tolist(), ends_s.tolist()):
            pos = start
            while pos < end:
                if isinstance(grids, tuple):
                    h, w = grids
                else:
                    if next_grid >= len(grids):
                        raise ValueError(
                            f"grid lists {len(grids)} images but input_ids has more image tokens "
                            f"(row {b}, position {pos})"
                        )
                    h, w = grids[next_grid]
                    next_grid += 1
                if pos + h * w > end:
                    what = "its grid" if isinstance(grids, tuple) else f"grid[{next_grid - 1}]"
                    raise ValueError(
                        f"image-token run [{start}, {end}) in row {b} (length {end - start}) does not "
                        f"split into images of {what} {h}x{w} = {h * w} tokens"
                    )
                spans[b].append((pos, h, w))
                pos += h * w
        if not isinstance(grids, tuple) and next_grid != len(grids):
            raise ValueError(f"grid lists {len(grids)} images but input_ids holds {next_grid}")
        return cls(spans, seq_len, valid)

    @staticmethod
    def _parse_grids(grid):
        if isinstance(grid, torch.Tensor):
            if grid.dim() == 1:
                return _check_grid(grid, "grid")
            if grid.dim() != 2 or grid.shape[1] != 2:
                raise ValueError(f"grid tensor must be [N, 2] (H, W per image), got {tuple(grid.shape)}")
            if grid.dtype.is_floating_point or grid.dtype == torch.bool:
                raise TypeError(f"grid tensor must be integer, got {grid.dtype}")
            return [_check_grid(g, f"grid[{i}]") for i, g in enumerate(grid.tolist())]
        if isinstance(grid, (tuple, list)) and len(grid) == 2 and not any(
            isinstance(v, (tuple, list, torch.Tensor)) for v in grid
        ):
            return _check_grid(grid, "grid")
        if isinstance(grid, (tuple, list)):
            return [_check_grid(g, f"grid[{i}]") for i, g in enumerate(grid)]
        raise TypeError(f"grid must be (H, W) or a list of (H, W), got {type(grid).__name__}")

    # ---------------------------------------------------------------- helpers

    @property
    def batch_size(self) -> int:
        return len(self.spans)

    @property
    def device(self) -> torch.device:
        return self.valid.device

    @property
    def num_images(self) -> List[int]:
        return [len(row) for row in self.spans]

    def to(self, device) -> "VisualLayout":
        """The same layout with its tensors on `device`."""
        device = torch.device(device)
        if device == self.device:
            return self
        new = object.__new__(VisualLayout)
        new.spans, new.seq_len = self.spans, self.seq_len
        for name in self._TENSORS:
            setattr(new, name, getattr(self, name).to(device))
        return new

    def append_text(self, num_tokens: int, attention_mask: Optional[torch.Tensor] = None) -> "VisualLayout":
        """The layout extended by `num_tokens` text tokens (KV-cache decoding).

        attention_mask: optional 0/1 [B, num_tokens] for the new tokens (default all valid).
        """
        if not _is_int(num_tokens):
            raise TypeError(f"num_tokens must be an int, got {type(num_tokens).__name__}")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        new_valid = _check_attention_mask(attention_mask, (self.batch_size, num_tokens), self.device)
        if new_valid is None:
            new_valid = torch.ones(self.batch_size, num_tokens, dtype=torch.bool, device=self.device)
        new = object.__new__(VisualLayout)
        new.spans, new.seq_len = self.spans, self.seq_len + num_tokens
        fills = {"valid": None, "image_id": -1, "ring": -1, "num_rings": 0, "row": -1, "col": -1,
                 "cx2": 0, "cy2": 0, "image_start": -1}
        for name, fill in fills.items():
            old = getattr(self, name)
            tail = new_valid if fill is None else torch.full(
                (self.batch_size, num_tokens), fill, dtype=old.dtype, device=self.device)
            setattr(new, name, torch.cat([old, tail], dim=1))
        return new

    def __repr__(self) -> str:
        rows = "; ".join(
            ", ".join(f"{h}x{w}@{s}" for s, h, w in row) or "no image" for row in self.spans
        )
        return f"VisualLayout(batch={self.batch_size}, seq_len={self.seq_len}, images=[{rows}])"
