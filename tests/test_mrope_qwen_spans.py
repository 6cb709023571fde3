"""c2rope.mrope.qwen_vision_spans (where Qwen-VL images and video frames lie) and
c2rope_mrope_position_ids (C2RoPE triplets as M-RoPE rows), against hand-written
spans and c2rope.reference.position_ids_ref."""
import random

import pytest
import torch

from c2rope import C2RoPEConfig
from c2rope.mrope import VisionSpan, c2rope_mrope_position_ids, qwen_vision_spans
from c2rope.reference import position_ids_ref

T, I, V = 0, 1, 2


def _types(*rows):
    width = max(len(r) for r in rows)
    types = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        types[b, width - len(row):] = torch.tensor(row)
        mask[b, width - len(row):] = 1
    return types, mask


def test_images_and_frames_by_hand():
    # Row 0: text, a 2x3 image (merged from 4x6), text, a 2-frame 1x2 video with frames
    # back to back (Qwen2/2.5-VL). Row 1 (left-padded): a 1x1 image, then a 2-frame 1x1
    # video with timestamp text between the frames (Qwen3-VL).
    row0 = [T] + [I] * 6 + [T, T] + [V] * 4 + [T]
    row1 = [T, I, T, T, V, T, T, V, T]
    types, mask = _types(row0, row1)
    images = torch.tensor([[1, 4, 6], [1, 2, 2]])
    videos = torch.tensor([[2, 2, 4], [2, 2, 2]])
    spans = qwen_vision_spans(types, images, videos, mask, spatial_merge_size=2)
    pad = types.shape[1] - len(row1)
    assert spans == [
        [VisionSpan(1, 2, 3), VisionSpan(9, 1, 2, 0, 0), VisionSpan(11, 1, 2, 0, 1)],
        [VisionSpan(pad + 1, 1, 1), VisionSpan(pad + 4, 1, 1, 1, 0), VisionSpan(pad + 7, 1, 1, 1, 1)],
    ]


def test_errors_name_the_argument():
    types, mask = _types([T, I, I, T])
    one = torch.tensor([[1, 2, 4]])
    with pytest.raises(ValueError, match="fewer grids"):
        qwen_vision_spans(types, None, None, mask)
    with pytest.raises(ValueError, match="more grids"):
        qwen_vision_spans(types, torch.cat([one, one]), None, mask)
    with pytest.raises(ValueError, match="shorter than its merged grid"):
        qwen_vision_spans(types, torch.tensor([[1, 4, 4]]), None, mask)
    with pytest.raises(ValueError, match="divisible by spatial_merge_size"):
        qwen_vision_spans(types, torch.tensor([[1, 2, 3]]), None, mask)
    with pytest.raises(ValueError, match="spatial_merge_size"):
        qwen_vision_spans(types, one, None, mask, spatial_merge_size=0)
    with pytest.raises(TypeError, match="image_grid_thw"):
        qwen_vision_spans(types, one.float(), None, mask)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        qwen_vision_spans(types + 3, one, None, mask)
    with pytest.raises(ValueError, match="attention_mask"):
        qwen_vision_spans(types, one, None, mask[:, :2])
    with pytest.raises(ValueError, match="padding inside"):
        gap = torch.tensor([[1, 1, 0, 1, 1]])
        qwen_vision_spans(torch.tensor([[T, I, I, I, T]]), one, None, gap)


@pytest.mark.parametrize("config", [C2RoPEConfig(), C2RoPEConfig.paper_code(), C2RoPEConfig(coords="merged")])
def test_positions_are_the_triplets_as_t_h_w_rows(config):
    for _ in range(5):
        rows, spans_ref = [], []
        for _ in range(random.randint(1, 3)):
            row, spans = [T] * random.randint(0, 2), []
            for _ in range(random.randint(0, 3)):
                h, w = random.randint(1, 4), random.randint(1, 4)
                spans.append((len(row), h, w))
                row += [random.choice([I, V])] * (h * w) + [T] * random.randint(0, 2)
            rows.append(row or [T])
            spans_ref.append(spans)
        types, mask = _types(*rows)
        width = types.shape[1]
        spans_ref = [[(s + width - len(r), h, w) for s, h, w in row] for row, r in zip(spans_ref, rows)]
        spans = [[VisionSpan(s, h, w) for s, h, w in row] for row in spans_ref]
        positions, deltas = c2rope_mrope_position_ids(spans, width, config, mask)
        want = position_ids_ref(spans_ref, mask.bool(), config)  # [B, S, 3] (m, x, y)
        valid = mask.bool()
        assert positions.shape == (3, len(rows), width) and positions.dtype == torch.float32
        for row, axis in ((0, 0), (1, 2), (2, 1)):  # t = m, h = y, w = x
            assert torch.equal(positions[row][valid], want[..., axis][valid])
        # A generated token (text index = valid count) continues at the next m.
        extended = position_ids_ref(spans_ref, torch.cat([valid, torch.ones(len(rows), 1, dtype=torch.bool)], 1),
                                    config)
        assert torch.equal(valid.sum(1, keepdim=True).float() + deltas, extended[:, -1, :1])


def test_text_spatial_zero_is_refused():
    types, mask = _types([T, I, T])
    with pytest.raises(ValueError, match="text_spatial"):
        c2rope_mrope_position_ids([[VisionSpan(1, 1, 1)]], 3, C2RoPEConfig(text_spatial="zero"), mask)
    with pytest.raises(TypeError, match="C2RoPEConfig"):
        c2rope_mrope_position_ids([[VisionSpan(1, 1, 1)]], 3, {"mask": "outward"}, mask)
