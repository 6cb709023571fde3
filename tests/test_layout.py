"""VisualLayout: building from input_ids / spans, per-token tensors, validation."""
import random

import pytest
import torch

import c2rope
from c2rope.layout import VisualLayout, grid_rings

IMG = 7  # image token id used throughout


def _ids_with_images(spans, seq_len, text_id=1):
    ids = torch.full((len(spans), seq_len), text_id, dtype=torch.long)
    for b, row in enumerate(spans):
        for start, h, w in row:
            ids[b, start : start + h * w] = IMG
    return ids


def test_single_grid_and_run_split():
    # Two 2x3 images back to back form one run of 12 tokens: two images.
    ids = torch.tensor([[1, 1] + [IMG] * 12 + [1]])
    layout = VisualLayout.from_input_ids(ids, IMG, grid=(2, 3))
    assert layout.spans == (((2, 2, 3), (8, 2, 3)),)
    assert layout.image_id[0].tolist() == [-1, -1] + [0] * 6 + [1] * 6 + [-1]
    assert layout.row[0, 2:8].tolist() == [0, 0, 0, 1, 1, 1]
    assert layout.col[0, 2:8].tolist() == [0, 1, 2, 0, 1, 2]
    # cx = col - 1, cy = 0.5 - row, doubled
    assert layout.cx2[0, 2:8].tolist() == [-2, 0, 2, -2, 0, 2]
    assert layout.cy2[0, 2:8].tolist() == [1, 1, 1, -1, -1, -1]


def test_list_of_grids_in_batch_order():
    spans = [[(1, 2, 2), (6, 3, 1)], [(0, 1, 4)]]
    ids = _ids_with_images(spans, 10)
    grids = [(2, 2), (3, 1), (1, 4)]
    layout = VisualLayout.from_input_ids(ids, IMG, grid=grids)
    assert [list(r) for r in layout.spans] == spans
    same = VisualLayout.from_input_ids(ids, IMG, grid=torch.tensor(grids))
    assert same.spans == layout.spans
    # A run of two images of different grids, split by the grid list.
    ids = torch.tensor([[1] + [IMG] * 7 + [1]])
    layout = VisualLayout.from_input_ids(ids, IMG, grid=[(2, 2), (1, 3)])
    assert layout.spans == (((1, 2, 2), (5, 1, 3)),)


def test_ring_ranks_24x24():
    rings = grid_rings(24, 24)
    assert int(rings.max()) == 11
    counts = torch.bincount(rings.flatten()).tolist()
    assert counts == [8 * r + 4 for r in range(12)]  # 4, 12, 20, ..., 92
    assert rings[11:13, 11:13].eq(0).all() and rings[0].eq(11).all()
    odd = grid_rings(5, 5)
    assert odd[2, 2] == 0 and (odd == 0).sum() == 1 and odd.max() == 2


def test_ring_ranks_rectangular_follow_chebyshev_radius():
    h, w = random.randint(1, 9), random.randint(1, 9)
    rings = grid_rings(h, w)
    radius = torch.tensor([[max(abs(c - (w - 1) / 2), abs((h - 1) / 2 - r)) for c in range(w)]
                           for r in range(h)])
    distinct = sorted(set(radius.flatten().tolist()))
    expected = torch.tensor([[distinct.index(v) for v in row] for row in radius.tolist()])
    assert torch.equal(rings.long(), expected)


def test_padding_left_and_right():
    ids = torch.tensor([[0, 0, 1, IMG, IMG, IMG, IMG, 1], [1, IMG, IMG, IMG, IMG, 1, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    layout = VisualLayout.from_input_ids(ids, IMG, (2, 2), attention_mask=mask)
    assert layout.spans == (((3, 2, 2),), ((1, 2, 2),))
    assert torch.equal(layout.valid, mask.bool())
    # Image ids under padding are padding, not images.
    ids2 = ids.clone()
    ids2[1, 6:] = IMG
    assert VisualLayout.from_input_ids(ids2, IMG, (2, 2), attention_mask=mask).spans == layout.spans


def test_from_spans_matches_input_ids():
    spans = [[(2, 3, 4), (20, 2, 2)], [(0, 1, 1)]]
    ids = _ids_with_images(spans, 30)
    a = VisualLayout.from_spans(spans, 30)
    b = VisualLayout.from_input_ids(ids, IMG, grid=[(3, 4), (2, 2), (1, 1)])
    for name in VisualLayout._TENSORS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # unsorted spans are sorted
    c = VisualLayout.from_spans([[(20, 2, 2), (2, 3, 4)], [(0, 1, 1)]], 30)
    assert c.spans == a.spans


def test_to_and_append_text():
    layout = VisualLayout.from_spans([[(1, 2, 2)]], 6, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]))
    assert layout.to("cpu") is layout
    longer = layout.append_text(3)
    assert longer.seq_len == 9
    assert longer.valid[0].tolist() == [True] * 5 + [False] + [True] * 3
    assert longer.image_id[0, 6:].eq(-1).all() and longer.ring[0, 6:].eq(-1).all()
    for name in VisualLayout._TENSORS:
        assert torch.equal(getattr(longer, name)[:, :6], getattr(layout, name))
    masked = layout.append_text(2, attention_mask=torch.tensor([[0, 1]]))
    assert masked.valid[0, 6:].tolist() == [False, True]


def test_empty_batch_and_zero_length():
    empty = VisualLayout.from_input_ids(torch.zeros(0, 5, dtype=torch.long), IMG, (2, 2))
    assert empty.batch_size == 0 and empty.valid.shape == (0, 5)
    zero = VisualLayout.from_input_ids(torch.zeros(2, 0, dtype=torch.long), IMG, (2, 2))
    assert zero.spans == ((), ()) and zero.image_id.shape == (2, 0)
    assert VisualLayout.from_spans([], 0).batch_size == 0


def test_public_name():
    assert c2rope.VisualLayout is VisualLayout


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(input_ids=[[1, 2]]), TypeError, "input_ids"),
        (dict(input_ids=torch.ones(4, dtype=torch.long)), ValueError, "input_ids"),
        (dict(input_ids=torch.ones(1, 4)), TypeError, "input_ids"),
        (dict(image_token_id=7.0), TypeError, "image_token_id"),
        (dict(grid=(0, 2)), ValueError, "grid"),
        (dict(grid=(2.0, 2)), TypeError, "grid"),
        (dict(grid="2x2"), TypeError, "grid"),
        (dict(grid=torch.ones(2, 3, dtype=torch.long)), ValueError, "grid"),
        (dict(attention_mask=torch.ones(1, 3)), ValueError, "attention_mask"),
        (dict(attention_mask=torch.full((1, 8), 2)), ValueError, "attention_mask"),
        (dict(attention_mask=[[1] * 8]), TypeError, "attention_mask"),
    ],
)
def test_from_input_ids_bad_input(kwargs, error, words):
    args = dict(input_ids=torch.tensor([[1, IMG, IMG, IMG, IMG, 1, 1, 1]]), image_token_id=IMG, grid=(2, 2))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        VisualLayout.from_input_ids(**args)


def test_run_length_mismatch():
    ids = torch.tensor([[1, IMG, IMG, IMG, 1]])
    with pytest.raises(ValueError, match="does not split"):
        VisualLayout.from_input_ids(ids, IMG, (2, 2))
    with pytest.raises(ValueError, match="grid"):  # too few grids
        VisualLayout.from_input_ids(torch.tensor([[IMG] * 8]), IMG, [(2, 2)])
    with pytest.raises(ValueError, match="grid lists 2"):  # too many grids
        VisualLayout.from_input_ids(torch.tensor([[IMG] * 4]), IMG, [(2, 2), (1, 1)])


@pytest.mark.parametrize(
    "spans, seq_len, mask, error, words",
    [
        ([[(0, 2, 2)]], 3, None, ValueError, "outside the sequence"),
        ([[(-1, 1, 1)]], 3, None, ValueError, "outside the sequence"),
        ([[(0, 2, 2), (3, 1, 1)]], 8, None, ValueError, "overlaps"),
        ([[(0, 0, 2)]], 3, None, ValueError, "grid must be positive"),
        ([[(0, 1)]], 3, None, ValueError, r"\(start, H, W\)"),
        ([[(0, 1.0, 1)]], 3, None, TypeError, "ints"),
        ([[(1, 1, 2)]], 3, torch.tensor([[1, 1, 0]]), ValueError, "padding"),
        ([[], []], 3, torch.ones(1, 3), ValueError, "attention_mask"),
        ([[]], 3.0, None, TypeError, "seq_len"),
        ([[]], -1, None, ValueError, "seq_len"),
        (torch.zeros(1, 3), 3, None, TypeError, "spans"),
        ([(0, 1, 1)], 3, None, ValueError, r"spans\[0\]\[0\]"),
    ],
)
def test_from_spans_bad_input(spans, seq_len, mask, error, words):
    with pytest.raises(error, match=words):
        VisualLayout.from_spans(spans, seq_len, attention_mask=mask)


def test_append_text_bad_input():
    layout = VisualLayout.from_spans([[]], 2)
    with pytest.raises(ValueError, match="num_tokens"):
        layout.append_text(-1)
    with pytest.raises(ValueError, match="attention_mask"):
        layout.append_text(2, attention_mask=torch.ones(1, 3))
