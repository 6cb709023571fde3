"""The M-RoPE family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) on c2rope's kernels.

- `mrope_position_ids`: the 3-axis (t, h, w) positions of a whole prompt (text before,
  between and after images/videos, several of them, left or right padding), equal to
  transformers' Qwen2-VL / Qwen2.5-VL `get_rope_index` when `circle` is None and the
  Circle-RoPE positions (docs/design.md §6) when `circle` is a CircleRoPEConfig; plus the
  decode offset `rope_deltas`.
- `mrope_decode_position_ids`: positions of generated tokens from those deltas.
- `mrope_axis_table` (Qwen2/2.5-VL chunked sections, [16, 24, 24] for d = 128) and
  `interleaved_mrope_axis_table` (Qwen3-VL): which position axis rotates each frequency
  slot, the `axis` argument of torch.ops.c2rope.cos_sin.
- `mrope_cos_sin`: HF-format cos/sin from HF-layout [3, B, S] positions and an axis table.
"""
from __future__ import annotations

import itertools
import numbers
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from .circle import CircleRoPEConfig, circle_points, temporal_indices

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values, as transformers uses them

# ----------------------------------------------------------------------------- axis tables


def _check_sections(mrope_section) -> List[int]:
    if isinstance(mrope_section, torch.Tensor):
        mrope_section = mrope_section.tolist()
    if not isinstance(mrope_section, (list, tuple)) or len(mrope_section) != 3:
        raise ValueError(f"mrope_section must be three non-negative ints (t, h, w), got {mrope_section!r}")
    for value in mrope_section:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
            raise ValueError(f"mrope_section must be three non-negative ints (t, h, w), got {mrope_section!r}")
    if sum(mrope_section) == 0:
        raise ValueError(f"mrope_section must cover at least one frequency slot, got {mrope_section!r}")
    return [int(v) for v in mrope_section]


def _check_dim(dim, half: int, what: str) -> None:
    if dim is None:
        return
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim != 2 * half:
        raise ValueError(f"dim must be twice the number of frequency slots {what} ({2 * half}), got {dim!r}")


def mrope_axis_table(mrope_section=(16, 24, 24), dim: Optional[int] = None) -> List[int]:
    """Qwen2-VL / Qwen2.5-VL chunked M-RoPE: the first mrope_section[0] frequency slots
    rotate by t (axis 0), the next mrope_section[1] by h (1), the last by w (2).

    The slots are d/2 = sum(mrope_section); `dim`, if given, is checked against it."""
    sections = _check_sections(mrope_section)
    _check_dim(dim, sum(sections), f"in mrope_section {sections}")
    return [axis for axis, count in enumerate(sections) for _ in range(count)]


def interleaved_mrope_axis_table(mrope_section=(24, 20, 20), dim: int = 128) -> List[int]:
    """Qwen3-VL interleaved M-RoPE over dim // 2 slots: slot k rotates by h when
    k % 3 == 1 and k < 3 * mrope_section[1], by w when k % 3 == 2 and
    k < 3 * mrope_section[2], and by t otherwise (so t keeps the rest). Like transformers,
    sections reaching past the last slot are cut off there."""
    sections = _check_sections(mrope_section)
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    half = dim // 2
    table = []
    for k in range(half):
        if k % 3 == 1 and k < 3 * sections[1]:
            table.append(1)
        elif k % 3 == 2 and k < 3 * sections[2]:
            table.append(2)
        else:
            table.append(0)
    return table


def mrope_cos_sin(position_ids, inv_freq, axis, attention_scaling: float = 1.0, dtype=torch.float32):
    """cos, sin [B, S, d] (HF format) for HF-layout M-RoPE positions [3, B, S] (or
    [B, S] text positions, broadcast to the three axes) and an axis table, through
    c2rope.rotary_cos_sin (the cos_sin kernel)."""
    from .rotary import rotary_cos_sin

    if not isinstance(position_ids, torch.Tensor):
        raise TypeError(f"position_ids must be a tensor, got {type(position_ids).__name__}")
    if position_ids.dim() == 2:
        position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
    if position_ids.dim() != 3 or position_ids.shape[0] != 3:
        raise ValueError(f"position_ids must be [3, B, S] or [B, S], got shape {tuple(position_ids.shape)}")
    # [3, B, S] -> [B, S, 3] as a strided view; the kernel takes any strides.
    positions = position_ids.permute(1, 2, 0)
    if positions.dtype != torch.float32:
        positions = positions.to(torch.float32)
    if not isinstance(axis, torch.Tensor):
        axis = torch.tensor(list(axis), dtype=torch.int32, device=positions.device)
    return rotary_cos_sin(positions, inv_freq, axis, attention_scaling, dtype)


# ----------------------------------------------------------------------------- positions


def _check_int_2d(name: str, value, shape=None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex:
        raise TypeError(f"{name} must be an integer or bool tensor, got dtype {value.dtype}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, seq_len], got shape {tuple(value.shape)}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    return value


def _check_grids(name: str, grids) -> Optional[List[Tuple[int, int, int]]]:
    if grids is None:
        return None
    if isinstance(grids, torch.Tensor):
        if grids.dtype.is_floating_point or grids.dtype.is_complex:
            raise TypeError(f"{name} must be an integer tensor [N, 3], got dtype {grids.dtype}")
        if grids.dim() != 2 or grids.shape[1] != 3:
            raise ValueError(f"{name} must be [N, 3] (t, h, w per image), got shape {tuple(grids.shape)}")
        grids = grids.tolist()
    rows = []
    if not isinstance(grids, (list, tuple)):
        raise TypeError(f"{name} must be an integer tensor [N, 3] or a list of (t, h, w), got {type(grids).__name__}")
    for row in grids:
        if not isinstance(row, (list, tuple)) or len(row) != 3 or any(not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1 for v in row):
            raise ValueError(f"{name} rows must be three positive ints (t, h, w), got {row!r}")
        rows.append(tuple(int(v) for v in row))
    return rows


def mm_token_type_ids_from_input_ids(input_ids, image_token_id, video_token_id=None) -> torch.Tensor:
    """transformers' mm_token_type_ids (0 text, 1 image, 2 video) from placeholder ids."""
    _check_int_2d("input_ids", input_ids)
    if not isinstance(image_token_id, numbers.Integral) or isinstance(image_token_id, bool):
        raise ValueError(f"image_token_id must be an int, got {image_token_id!r}")
    types = (input_ids == image_token_id).to(torch.int64) * IMAGE
    if video_token_id is not None:
        if not isinstance(video_token_id, numbers.Integral) or isinstance(video_token_id, bool):
            raise ValueError(f"video_token_id must be an int or None, got {video_token_id!r}")
        types = types + (input_ids == video_token_id).to(torch.int64) * VIDEO
    return types


def mrope_position_ids(
    input_ids=None,
    image_grid_thw=None,
    video_grid_thw=None,
    attention_mask=None,
    *,
    mm_token_type_ids=None,
    image_token_id: Optional[int] = None,
    video_token_id: Optional[int] = None,
    spatial_merge_size: int = 2,
    second_per_grid_ts=None,
    tokens_per_second=None,
    circle: Optional[CircleRoPEConfig] = None,
    sample_lengths: Optional[Sequence[Sequence[int]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(position_ids float32 [3, B, S], rope_deltas float32 [B, 1]) of Qwen2/2.5-VL prompts.

    Which tokens are image/video tokens comes from `mm_token_type_ids` (0 text, 1 image,
    2 video; what the processor returns) or from `input_ids` and `image_token_id`
    (and `video_token_id`). `image_grid_thw` / `video_grid_thw` [N, 3] give the grids
    before spatial merging, in order over the whole batch, as transformers takes them.
    Padding (attention_mask == 0) gets position 0.

    circle None: M-RoPE exactly as transformers' get_rope_index: text counts up on all
        three axes; a vision grid (t, h', w') = (t, h/m, w/m) starting at p takes
        (p + trunc(f * interval), p + row, p + col); text after it continues at
        p + max(h', w') (max + 1 for images).
    circle CircleRoPEConfig: vision tokens take `circle_position_ids` + p and the
        following text continues at their max + 1 (docs/design.md §6).
    Videos: interval = tokens_per_second * second_per_grid_ts[v] when tokens_per_second is
        given (Qwen2.5-VL), else 1 (Qwen2-VL); images always use 1.
    rope_deltas = max position + 1 - number of valid tokens, per row: a generated token
        at text index n (counting valid tokens) has position n + rope_deltas.
    Consecutive vision tokens of the same kind are split across as many grids as they
    need, so images need not be separated by text.
    sample_lengths (packed rows, no padding): per batch row, the lengths of the samples
        it holds back to back; each is placed as if it ran alone (positions from 0), its
        grids taken in order. rope_deltas are then meaningless (no decoding follows).
    """
    if mm_token_type_ids is None:
        if input_ids is None or image_token_id is None:
            raise ValueError("pass mm_token_type_ids, or input_ids together with image_token_id")
        mm_token_type_ids = mm_token_type_ids_from_input_ids(input_ids, image_token_id, video_token_id)
    _check_int_2d("mm_token_type_ids", mm_token_type_ids)
    if input_ids is not None:
        _check_int_2d("input_ids", input_ids, mm_token_type_ids.shape)
    if attention_mask is not None:
        _check_int_2d("attention_mask", attention_mask, mm_token_type_ids.shape)
    if not isinstance(spatial_merge_size, numbers.Integral) or isinstance(spatial_merge_size, bool) or spatial_merge_size < 1:
        raise ValueError(f"spatial_merge_size must be a positive int, got {spatial_merge_size!r}")
    if second_per_grid_ts is not None and tokens_per_second is None:
        raise ValueError("second_per_grid_ts needs tokens_per_second (Qwen2.5-VL's vision_config.tokens_per_second)")
    if circle is not None and not isinstance(circle, CircleRoPEConfig):
        raise TypeError(f"circle must be a CircleRoPEConfig or None, got {type(circle).__name__}")
    grids = {IMAGE: _check_grids("image_grid_thw", image_grid_thw), VIDEO: _check_grids("video_grid_thw", video_grid_thw)}
    for kind, name in ((IMAGE, "image_grid_thw"), (VIDEO, "video_grid_thw")):
        for t, h, w in grids[kind] or ():
            if h % spatial_merge_size or w % spatial_merge_size:
                raise ValueError(f"{name} rows must have h and w divisible by spatial_merge_size "
                                 f"{spatial_merge_size}, got {(t, h, w)}")
    types_cpu = mm_token_type_ids.detach().cpu()
    if bool(((types_cpu < 0) | (types_cpu > 2)).any()):
        raise ValueError("mm_token_type_ids must hold 0 (text), 1 (image) or 2 (video)")
    valid_cpu = None if attention_mask is None else attention_mask.detach().cpu().bool()

    device = mm_token_type_ids.device
    batch, seq_len = mm_token_type_ids.shape
    position_ids = torch.zeros(3, batch, seq_len, dtype=torch.float32, device=device)
    deltas = torch.zeros(batch, 1, dtype=torch.float32, device=device)
    next_grid = {IMAGE: 0, VIDEO: 0}
    intervals = iter(second_per_grid_ts) if second_per_grid_ts is not None else None

    def take_grid(kind):
        name = "image_grid_thw" if kind == IMAGE else "video_grid_thw"
        if grids[kind] is None or next_grid[kind] >= len(grids[kind]):
            raise ValueError(f"{name} has fewer grids than the prompt has {name.split('_')[0]}s")
        grid = grids[kind][next_grid[kind]]
        next_grid[kind] += 1
        return grid

    if sample_lengths is not None:
        if len(sample_lengths) != batch or any(sum(row) != seq_len for row in sample_lengths):
            raise ValueError(f"sample_lengths must give, for each of the {batch} rows, sample lengths summing to "
                             f"{seq_len}")
        if valid_cpu is not None and not bool(valid_cpu.all()):
            raise ValueError("packed rows (sample_lengths) cannot hold padding (attention_mask zeros)")

    def runs(types, lengths):
        """(kind, length, restart) runs; restart: the run opens a new packed sample."""
        values = types.tolist()
        at = 0
        for length in lengths:
            first = True
            for kind, run in itertools.groupby(values[at:at + length]):
                yield kind, len(list(run)), first
                first = False
            at += length

    for b in range(batch):
        types = types_cpu[b] if valid_cpu is None else types_cpu[b][valid_cpu[b]]
        pieces = []
        current = 0.0  # the position the next token starts from (Qwen's current_pos)
        lengths = [types.numel()] if sample_lengths is None else sample_lengths[b]
        for kind, length, restart in runs(types, lengths):
            if restart:
                current = 0.0
            if kind == TEXT:
                pieces.append(torch.arange(length, dtype=torch.float64).expand(3, -1) + current)
                current += length
                continue
            while length > 0:
                t, h, w = take_grid(kind)
                h, w = h // spatial_merge_size, w // spatial_merge_size
                if t * h * w > length:
                    raise ValueError(
                        f"a run of {length} {'image' if kind == IMAGE else 'video'} tokens in batch row {b} "
                        f"is shorter than its grid {(t, h * spatial_merge_size, w * spatial_merge_size)} "
                        f"needs ({t * h * w} tokens after spatial merging)"
                    )
                length -= t * h * w
                interval = 1
                if kind == VIDEO and tokens_per_second is not None:
                    spg = next(intervals) if intervals is not None else 1
                    interval = tokens_per_second * spg
                t_index = temporal_indices(t, interval)
                if circle is None:
                    piece = _mrope_grid(t_index, h, w) + current
                    current += max(h, w)
                else:
                    piece = circle_points(t_index, h, w, circle.alpha, circle.radius, circle.move_to_origin)
                    piece = piece + current
                    current = float(piece.max()) + 1
                pieces.append(piece)
        if not pieces:
            continue
        row = torch.cat(pieces, dim=1).to(torch.float32)
        if valid_cpu is None:
            position_ids[:, b] = row.to(device)
        else:
            position_ids[:, b, valid_cpu[b].to(device)] = row.to(device)
        deltas[b, 0] = float(row.max()) + 1 - row.shape[1]
    for kind, name in ((IMAGE, "image_grid_thw"), (VIDEO, "video_grid_thw")):
        if grids[kind] is not None and next_grid[kind] != len(grids[kind]):
            raise ValueError(f"{name} has {len(grids[kind])} grids but the prompt uses {next_grid[kind]}")
    return position_ids, deltas


def _mrope_grid(t_index: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Qwen's vision positions of a grid before the offset: float64 [3, T*h*w]."""
    tt, hh, ww = torch.meshgrid(
        t_index.to(torch.float64),
        torch.arange(h, dtype=torch.float64),
        torch.arange(w, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([tt, hh, ww]).reshape(3, -1)


class VisionSpan(NamedTuple):
    """One image, or one frame of a video, in a Qwen-VL prompt: `h * w` consecutive
    tokens from `start` (merged grid, raster order). `video` / `frame`: which video
    (counted over the batch) and which of its frames; None for images."""

    start: int
    h: int
    w: int
    video: Optional[int] = None
    frame: Optional[int] = None


def qwen_vision_spans(mm_token_type_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None, *,
                      spatial_merge_size: int = 2) -> List[List[VisionSpan]]:
    """Where every image and every video frame of a Qwen-VL prompt lies, per batch row.

    Grids are taken in order over the batch, as transformers takes them: an image row
    (t, h, w) of `image_grid_thw` is one span of (h/m) x (w/m) tokens (t is 1 for
    images), a video row is t frames of that size. A frame's tokens are consecutive;
    frames may follow each other directly (Qwen2/2.5-VL) or have text between them
    (Qwen3-VL's timestamps). Starts index the padded sequence.
    """
    _check_int_2d("mm_token_type_ids", mm_token_type_ids)
    if attention_mask is not None:
        _check_int_2d("attention_mask", attention_mask, mm_token_type_ids.shape)
    if not isinstance(spatial_merge_size, numbers.Integral) or isinstance(spatial_merge_size, bool) \
            or spatial_merge_size < 1:
        raise ValueError(f"spatial_merge_size must be a positive int, got {spatial_merge_size!r}")
    queues = {IMAGE: [], VIDEO: []}
    for kind, name, grids in ((IMAGE, "image_grid_thw", image_grid_thw), (VIDEO, "video_grid_thw", video_grid_thw)):
        for index, (t, h, w) in enumerate(_check_grids(name, grids) or ()):
            if h % spatial_merge_size or w % spatial_merge_size:
                raise ValueError(f"{name} rows must have h and w divisible by spatial_merge_size "
                                 f"{spatial_merge_size}, got {(t, h, w)}")
            h, w = h // spatial_merge_size, w // spatial_merge_size
            video = index if kind == VIDEO else None
            queues[kind].extend((h, w, video, f if video is not None else None) for f in range(t))
    queues = {kind: list(reversed(q)) for kind, q in queues.items()}  # pop() from the front
    types_cpu = mm_token_type_ids.detach().cpu()
    if bool(((types_cpu < 0) | (types_cpu > 2)).any()):
        raise ValueError("mm_token_type_ids must hold 0 (text), 1 (image) or 2 (video)")
    valid = None if attention_mask is None else attention_mask.detach().cpu().bool()
    rows = []
    for b in range(types_cpu.shape[0]):
        index = torch.arange(types_cpu.shape[1]) if valid is None else valid[b].nonzero().flatten()
        types = types_cpu[b][index].tolist()
        row, at = [], 0
        for kind, run in itertools.groupby(types):
            length = len(list(run))
            end = at + length
            while kind != TEXT and at < end:
                what = "image" if kind == IMAGE else "video"
                if not queues[kind]:
                    raise ValueError(f"{what}_grid_thw has fewer grids than the prompt has {what} tokens for")
                h, w, video, frame = queues[kind].pop()
                if at + h * w > end:
                    raise ValueError(f"a run of {what} tokens in batch row {b} is shorter than its merged grid "
                                     f"{h}x{w} needs")
                start = int(index[at])
                if int(index[at + h * w - 1]) != start + h * w - 1:
                    raise ValueError(f"the {what} at token {start} of batch row {b} has padding inside it")
                row.append(VisionSpan(start, h, w, video, frame))
                at += h * w
            at = end
        rows.append(row)
    for kind, name in ((IMAGE, "image_grid_thw"), (VIDEO, "video_grid_thw")):
        if queues[kind]:
            raise ValueError(f"{name} has more grids than the prompt has tokens for ({len(queues[kind])} frames "
                             "or images left)")
    return rows


def c2rope_mrope_position_ids(spans: Sequence[Sequence[VisionSpan]], seq_len: int, config, attention_mask=None,
                              device=None, sample_starts=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """C2RoPE positions of a Qwen-VL prompt in the model's M-RoPE layout:
    (position_ids float32 [3, B, S], rope_deltas float32 [B, 1]).

    Every image and video frame in `spans` (`qwen_vision_spans`) is a C2RoPE image, so
    a token's triplet (m, x, y) is `c2rope.build_position_ids`'s; the rows are
    (t, h, w) = (m, y, x): m on the temporal section, the row coordinate y on the
    height section and the column coordinate x on the width section. Text is
    (m, m, m) as in the unpatched model (text_spatial="temporal"). rope_deltas makes
    transformers' decoding (text index + rope_deltas on all three rows) continue at
    the next m. `sample_starts` (int64 [B, S], packed rows: the first token of each
    token's sample) places every sample as if it ran alone; rope_deltas are then
    meaningless (a packed row is not decoded from).
    """
    from .config import C2RoPEConfig
    from .layout import VisualLayout
    from .positions import build_position_ids, next_temporal_index

    if not isinstance(config, C2RoPEConfig):
        raise TypeError(f"config must be a c2rope.C2RoPEConfig, got {type(config).__name__}")
    if config.text_spatial != "temporal":
        raise ValueError(
            "Qwen-VL decodes text at (p, p, p) on its three M-RoPE rows, so C2RoPEConfig(text_spatial="
            f"{config.text_spatial!r}) cannot be delivered through it; use text_spatial='temporal'"
        )
    layout = VisualLayout.from_spans([[tuple(s[:3]) for s in row] for row in spans], seq_len,
                                     attention_mask=attention_mask, device=device)
    triplets = build_position_ids(layout, config, sample_starts=sample_starts)  # [B, S, 3] (m, x, y)
    positions = triplets[..., [0, 2, 1]].permute(2, 0, 1).contiguous()
    deltas = (next_temporal_index(layout, config) - layout.valid.sum(dim=1)).to(torch.float32).unsqueeze(1)
    return positions, deltas


# ----------------------------------------------------------------------------- frame axis

FRAME_ROW = 3  # the frame index is a 4th position row after (t, h, w)


def frame_axis_table(row_table: Sequence[int]) -> List[int]:
    """The axis table with a frame axis: `row_table` says which of the rows (t, h, w) =
    (0, 1, 2) each frequency slot rotates by; the slower half (the last floor(n / 2) in
    slot order) of the n slots on t rotate by the frame row (3) instead.

    ValueError when t has fewer than 2 slots: the frame axis would take all of m's
    frequencies, or none."""
    table = [int(a) for a in row_table]
    if any(a not in (0, 1, 2) for a in table):
        raise ValueError(f"row_table must hold 0, 1 or 2 (t, h, w) per slot, got {table!r}")
    temporal = [k for k, a in enumerate(table) if a == 0]
    if len(temporal) < 2:
        raise ValueError(
            f"options['frame_axis']='separate' needs at least 2 frequency slots on the temporal row to split "
            f"between m and the frame index; this rotary has {len(temporal)} (axis table {table})"
        )
    for k in temporal[len(temporal) - len(temporal) // 2:]:
        table[k] = FRAME_ROW
    return table


def frame_axis_positions(position_ids: torch.Tensor, spans: Sequence[Sequence[VisionSpan]]) -> torch.Tensor:
    """The frame row, float32 [B, S], for M-RoPE positions [3, B, S] (t = m).

    A token of frame k of a video with T frames in its row gets a + k - (T - 1) / 2, a
    the mean m of all the video's tokens there: frames one apart, centred on the video
    like (x, y) on an image. Every other token (text, images, padding) keeps its m, so a
    prompt without video rotates exactly as without the frame axis."""
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 3 or position_ids.shape[0] != 3:
        raise ValueError("position_ids must be a [3, B, S] tensor")
    t = position_ids[0].to(torch.float64)
    frame = t.clone()
    if len(spans) != t.shape[0]:
        raise ValueError(f"spans has {len(spans)} rows but position_ids has batch {t.shape[0]}")
    for b, row in enumerate(spans):
        videos = {}
        for span in row:
            if span.video is not None:
                videos.setdefault(span.video, []).append(span)
        for frames in videos.values():
            count = max(s.frame for s in frames) + 1
            tokens = torch.cat([torch.arange(s.start, s.start + s.h * s.w) for s in frames]).to(t.device)
            mean = t[b, tokens].mean()
            for s in frames:
                frame[b, s.start:s.start + s.h * s.w] = mean + s.frame - (count - 1) / 2
    return frame.to(torch.float32)


def mrope_decode_position_ids(rope_deltas, seq_len: int, past_length: int = 0, attention_mask=None) -> torch.Tensor:
    """Positions float32 [3, B, seq_len] of `seq_len` new text tokens after `past_length`
    cached ones: text index + rope_deltas on all three axes.

    The text index counts valid tokens (attention_mask [B, past_length + seq_len] if
    given, HF's cumsum - 1 with padding at 0), else it is past_length + arange(seq_len)."""
    if not isinstance(rope_deltas, torch.Tensor):
        raise TypeError(f"rope_deltas must be a tensor, got {type(rope_deltas).__name__}")
    if rope_deltas.dim() != 2 or rope_deltas.shape[1] != 1:
        raise ValueError(f"rope_deltas must be [B, 1], got shape {tuple(rope_deltas.shape)}")
    for name, value in (("seq_len", seq_len), ("past_length", past_length)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    batch, device = rope_deltas.shape[0], rope_deltas.device
    if attention_mask is not None:
        _check_int_2d("attention_mask", attention_mask, (batch, past_length + seq_len))
        index = attention_mask.long().cumsum(-1) - 1
        index = index.masked_fill(attention_mask == 0, 0)[:, past_length:].to(device)
    else:
        index = torch.arange(past_length, past_length + seq_len, device=device).expand(batch, -1)
    positions = index.to(torch.float32) + rope_deltas.to(torch.float32)
    return positions.unsqueeze(0).expand(3, -1, -1).contiguous()


__all__ = [
    "VisionSpan",
    "c2rope_mrope_position_ids",
    "frame_axis_positions",
    "frame_axis_table",
    "qwen_vision_spans",
    "interleaved_mrope_axis_table",
    "mm_token_type_ids_from_input_ids",
    "mrope_axis_table",
    "mrope_cos_sin",
    "mrope_decode_position_ids",
    "mrope_position_ids",
]
