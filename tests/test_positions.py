"""build_position_ids / next_temporal_index against the token-by-token reference and
hand-computed values (docs/design.md §3)."""
import itertools
import random

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig, VisualLayout, build_position_ids, next_temporal_index
from c2rope.reference import next_temporal_index_ref, position_ids_ref
from layouts import random_layout  # noqa: E402

ALL_CONFIGS = [
    C2RoPEConfig(temporal=t, text_spatial=ts, coords=c)
    for t, ts, c in itertools.product(("raster", "concentric", "shared"), ("temporal", "zero"),
                                      ("centered", "merged"))
]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: f"{c.temporal}-{c.text_spatial}-{c.coords}")
def test_matches_reference_on_random_layouts(config):
    for _ in range(4):
        layout = random_layout(max_side=6, min_tail=0)
        pos = build_position_ids(layout, config)
        assert pos.dtype == torch.float32 and pos.shape == (layout.batch_size, layout.seq_len, 3)
        torch.testing.assert_close(pos, position_ids_ref(layout.spans, layout.valid, config), rtol=0, atol=0)
        nxt = next_temporal_index(layout, config)
        assert nxt.dtype == torch.int64
        assert torch.equal(nxt, next_temporal_index_ref(layout.spans, layout.valid, config))
        if config.temporal != "shared":
            # The next token continues where the last valid one left off (a concentric
            # image at the end leaves its last slot as the largest m).
            last_m = torch.where(layout.valid, pos[..., 0], torch.full_like(pos[..., 0], -1)).amax(1)
            expected = torch.where(layout.valid.any(1), last_m + 1, torch.zeros_like(last_m))
            assert torch.equal(nxt, expected.long())


@pytest.mark.parametrize("coords", ("centered", "merged"))
def test_shared_image_sits_between_the_text_around_it(coords):
    # temporal="shared": one m per image, and every component used inside an image lies
    # above the text before it and below the text after it (so does the next token).
    config = C2RoPEConfig(temporal="shared", coords=coords)
    for _ in range(4):
        layout = random_layout(max_side=7, min_tail=0)
        pos = build_position_ids(layout, config).double()
        nxt = next_temporal_index(layout, config)
        for b, row in enumerate(layout.spans):
            valid = layout.valid[b]
            for start, h, w in row:
                image = pos[b, start : start + h * w]
                assert image[:, 0].unique().numel() == 1  # one m per image
                # the image's m is its centre: components symmetric around it
                assert torch.equal(image[:, 1:].amax() + image[:, 1:].amin(), 2 * image[0, 0])
                before = pos[b, :start][valid[:start]]
                after = pos[b, start + h * w :][valid[start + h * w :]]
                if before.numel():
                    assert before.amax() < image.amin()
                    assert image.amin() == before.amax() + 1  # no temporal slot wasted before
                if after.numel():
                    assert image.amax() < after.amin()
                    assert after.amin() == image.amax() + 1  # what follows continues right after
                else:
                    assert nxt[b] == image.amax() + 1


def test_no_image_is_plain_rope_positions():
    # With text_spatial="temporal" a text-only sequence is (m, m, m) with HF's m.
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    layout = VisualLayout.from_input_ids(torch.ones(2, 6, dtype=torch.long), 7, (2, 2), attention_mask=mask)
    pos = build_position_ids(layout, C2RoPEConfig())
    hf = mask.cumsum(-1) - 1
    hf.masked_fill_(mask == 0, 1)
    assert torch.equal(pos[..., 0], hf.float())
    valid = mask.bool()
    assert torch.equal(pos[..., 1][valid], hf.float()[valid]) and torch.equal(pos[..., 2][valid], hf.float()[valid])
    assert pos[..., 1:][~valid].eq(0).all()


def test_hand_checked_24x24_two_images():
    # text(3), image, image, text(2): seed defaults
    ids = torch.tensor([[1, 1, 1] + [7] * 1152 + [1, 1]])
    layout = VisualLayout.from_input_ids(ids, 7, (24, 24))
    pos = build_position_ids(layout, C2RoPEConfig())
    first = pos[0, 3:579]
    a = 3 + 287.5  # mean m of the first image
    assert first[0].tolist() == [3.0, a - 11.5, a + 11.5]  # top-left corner
    assert first[575].tolist() == [578.0, a + 11.5, a - 11.5]  # bottom-right
    second = pos[0, 579:1155]
    b = 579 + 287.5
    assert second[0].tolist() == [579.0, b - 11.5, b + 11.5]  # coordinates restart
    assert pos[0, 1155].tolist() == [1155.0] * 3

    paper = build_position_ids(layout, C2RoPEConfig.paper_code())
    # concentric: 12 slots per image, periphery first; merged coords are integers
    assert paper[0, 3, 0] == 3 and paper[0, 3 + 11 * 24 + 11, 0] == 3 + 11
    assert paper[0, 579, 0] == 15 and paper[0, 1155].tolist() == [27.0] * 3
    xs = (paper[0, 3:579, 1] - paper[0, 3:579, 1].mean()).unique()
    assert xs.numel() == 23  # -11 ... 11 with the two middle columns merged
    assert next_temporal_index(layout, C2RoPEConfig.paper_code()).tolist() == [29]


def test_hand_checked_shared():
    # text(3), 24x24 image, 6x10 image, text(2): one m per image at its centre
    ids = torch.tensor([[1, 1, 1] + [7] * (576 + 60) + [1, 1]])
    layout = VisualLayout.from_input_ids(ids, 7, [(24, 24), (6, 10)])
    pos = build_position_ids(layout, C2RoPEConfig(temporal="shared"))
    first = pos[0, 3:579]
    assert first[:, 0].eq(3 + 11.5).all()
    assert first[0].tolist() == [14.5, 3.0, 26.0] and first[575].tolist() == [14.5, 26.0, 3.0]
    second = pos[0, 579:639]  # starts at 3 + 24 = 27; half = 4.5 (10 columns)
    assert second[:, 0].eq(31.5).all()
    assert second[0].tolist() == [31.5, 27.0, 34.0] and second[59].tolist() == [31.5, 36.0, 29.0]
    assert pos[0, 639].tolist() == [37.0] * 3 and pos[0, 640].tolist() == [38.0] * 3
    assert next_temporal_index(layout, C2RoPEConfig(temporal="shared")).tolist() == [39]
    # merged: 24 columns give x in -11 ... 11, so the image takes 23 slots
    merged = C2RoPEConfig(temporal="shared", coords="merged")
    pos = build_position_ids(layout, merged)
    assert pos[0, 3, 0] == 3 + 11 and pos[0, 579, 0] == 26 + 4
    assert next_temporal_index(layout, merged).tolist() == [26 + 9 + 2]


def test_zero_text_spatial():
    layout = VisualLayout.from_spans([[(2, 3, 3)]], 13)
    pos = build_position_ids(layout, C2RoPEConfig(text_spatial="zero"))
    assert pos[0, :2, 1:].eq(0).all() and pos[0, 11:, 1:].eq(0).all()
    assert pos[0, 2:11, 1].tolist() == [-1.0, 0.0, 1.0] * 3
    assert pos[0, 2:11, 2].tolist() == [1.0] * 3 + [0.0] * 3 + [-1.0] * 3


def test_empty():
    cfg = C2RoPEConfig()
    for layout in (VisualLayout.from_spans([], 0), VisualLayout.from_spans([[], []], 0),
                   VisualLayout.from_spans([], 4)):
        pos = build_position_ids(layout, cfg)
        assert pos.shape == (layout.batch_size, layout.seq_len, 3)
        assert next_temporal_index(layout, cfg).shape == (layout.batch_size,)


def test_bad_input():
    layout = VisualLayout.from_spans([[]], 3)
    with pytest.raises(TypeError, match="layout"):
        build_position_ids(torch.zeros(1, 3), C2RoPEConfig())
    with pytest.raises(TypeError, match="config"):
        build_position_ids(layout, {"temporal": "raster"})
    with pytest.raises(TypeError, match="layout"):
        next_temporal_index(None, C2RoPEConfig())


def test_torch_compile_fullgraph():
    layout, config = random_layout(max_side=6, min_tail=0), random.choice(ALL_CONFIGS)
    compiled = torch.compile(lambda lay: build_position_ids(lay, config), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(layout), build_position_ids(layout, config))


def test_public_names():
    assert c2rope.build_position_ids is build_position_ids
    assert c2rope.next_temporal_index is next_temporal_index
