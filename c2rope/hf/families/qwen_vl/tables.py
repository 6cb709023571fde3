"""The cos/sin tables a patched Qwen-VL text model rotates by, when they are not the
model's own (c2rope_patch.py installs these on the text model's `rotary_emb`):

- `C2RoPEAxisTable` (options frequencies="c2rope"): the rows (t, h, w) = (m, y, x)
  rotated by the config's axis table instead of the model's M-RoPE sections;
- `FrameAxisTable` (options frame_axis="separate"): a 4th row, the frame index of video
  tokens (`c2rope.mrope.frame_axis_positions`), rotating the slower half of the slots
  the active table gives to t (`c2rope.mrope.frame_axis_table`).

Both return what the release's attention expects: [B, S, d], or [3, B, S, d] where the
release applies the sections inside attention (transformers 4.57 Qwen2/2.5-VL): every
row then carries the whole mixed table, so whichever slots attention picks from a row
hold the right angles.
"""
from __future__ import annotations

from typing import Callable, List

import torch
from torch import nn

from ....config import AXIS_M, AXIS_X, AXIS_Y, C2RoPEConfig
from ....mrope import frame_axis_positions, frame_axis_table, mrope_axis_table

# Row of the [3, B, S] (t, h, w) positions each C2RoPE axis is delivered on.
ROW_OF_AXIS = {AXIS_M: 0, AXIS_Y: 1, AXIS_X: 2}


def _rotary_dim(rotary: nn.Module) -> int:
    return 2 * rotary.inv_freq.shape[-1]


def splits_in_attention(rotary: nn.Module) -> bool:
    """Whether the release's rotary returns one table per row ([3, B, S, d]) and leaves
    the section split to attention."""
    probe = torch.zeros(3, 1, 1, dtype=torch.long, device=rotary.inv_freq.device)
    with torch.no_grad():
        cos, _ = rotary(torch.zeros(1, dtype=torch.float32, device=rotary.inv_freq.device), probe)
    return cos.dim() == 4


def _sections(text_config) -> List[int]:
    for name in ("rope_parameters", "rope_scaling"):
        parameters = getattr(text_config, name, None)
        if isinstance(parameters, dict) and parameters.get("mrope_section") is not None:
            return list(parameters["mrope_section"])
    raise TypeError("the Qwen-VL text config has no mrope_section (in rope_parameters or rope_scaling)")


def model_row_table(rotary: nn.Module, text_config) -> List[int]:
    """Which row (t, h, w) = (0, 1, 2) each frequency slot of the model's own rotary
    rotates by. Read from the rotary itself (position 1 on one row, 0 on the others:
    the slots whose sine is non-zero belong to that row), so chunked and interleaved
    sections, and whatever a release does at the edges, come out as the model computes
    them; releases that split in attention get their chunked config sections."""
    if splits_in_attention(rotary):
        return mrope_axis_table(_sections(text_config), dim=_rotary_dim(rotary))
    device = rotary.inv_freq.device
    half = rotary.inv_freq.shape[-1]
    table = [None] * half
    for row in range(3):
        positions = torch.zeros(3, 1, 1, dtype=torch.long, device=device)
        positions[row] = 1
        with torch.no_grad():
            _, sin = rotary(torch.zeros(1, dtype=torch.float32, device=device), positions)
        for slot in (sin[0, 0, :half] != 0).nonzero().flatten().tolist():
            table[slot] = row
    if any(row is None for row in table):
        raise TypeError(f"could not tell which M-RoPE row rotates each frequency slot of {type(rotary).__name__}")
    return table


def c2rope_row_table(rotary: nn.Module, config: C2RoPEConfig) -> List[int]:
    """The config's axis table (`C2RoPEConfig.axis_table`) as rows of (t, h, w)."""
    return [ROW_OF_AXIS[axis] for axis in config.axis_table(_rotary_dim(rotary))]


def _tables(rotary: nn.Module, positions: torch.Tensor, table, per_row: bool, dtype):
    """cos, sin for positions [A, B, S] (A rows) by `table` (one row index per slot)."""
    from ....rotary import rotary_cos_sin

    axis = torch.tensor(table, dtype=torch.int32, device=positions.device)
    cos, sin = rotary_cos_sin(positions.permute(1, 2, 0).to(torch.float32), rotary.inv_freq.to(positions.device),
                              axis, float(getattr(rotary, "attention_scaling", 1.0)), dtype)
    if per_row:
        cos, sin = cos.unsqueeze(0).expand(3, -1, -1, -1), sin.unsqueeze(0).expand(3, -1, -1, -1)
    return cos, sin


def three_rows(position_ids: torch.Tensor) -> torch.Tensor:
    """(t, h, w) rows of the position_ids a Qwen-VL text model receives ([3, B, S], or
    [4, B, S] with the text positions first)."""
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        return position_ids[1:]
    return position_ids


class C2RoPEAxisTable:
    """`rotary_emb` for frequencies="c2rope": cos/sin of the (t, h, w) rows by the
    config's axis table."""

    def __init__(self, rotary: nn.Module, config: C2RoPEConfig):
        self.rows = c2rope_row_table(rotary, config)
        self.per_row = splits_in_attention(rotary)

    def __call__(self, original: Callable, rotary: nn.Module, x, position_ids, *args, **kwargs):
        rows = three_rows(position_ids)
        if rows.dim() == 2:  # text positions: the same on every row
            rows = rows.unsqueeze(0).expand(3, -1, -1)
        return _tables(rotary, rows, self.rows, self.per_row, x.dtype)


class FrameAxisTable:
    """`rotary_emb` for frame_axis="separate": when the running call holds video frames
    (`frames()` returns the chunk's spans), cos/sin of the rows (t, h, w, frame) by
    `frame_axis_table(row_table)`; otherwise (text, images only, decoding) the wrapped
    rotary's own output, every slot of t then rotating by m as before."""

    def __init__(self, rotary: nn.Module, row_table: List[int], frames: Callable):
        self.table = frame_axis_table(row_table)  # ValueError when t has no room
        self.per_row = splits_in_attention(rotary)
        self.frames = frames

    def __call__(self, original: Callable, rotary: nn.Module, x, position_ids, *args, **kwargs):
        spans = self.frames()
        rows = three_rows(position_ids)
        if spans is None or rows.dim() != 3 or not any(s.video is not None for row in spans for s in row):
            return original(x, position_ids, *args, **kwargs)
        frame = frame_axis_positions(rows, spans).to(rows.device)
        positions = torch.cat([rows.to(torch.float32), frame.unsqueeze(0)], dim=0)
        return _tables(rotary, positions, self.table, self.per_row, x.dtype)


__all__ = ["C2RoPEAxisTable", "FrameAxisTable", "c2rope_row_table", "model_row_table", "three_rows"]
