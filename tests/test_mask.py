"""torch.ops.c2rope.chebyshev_mask and c2rope.chebyshev_mask (docs/design.md §5)."""
import random

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig, VisualLayout, chebyshev_mask
from c2rope.reference import chebyshev_mask_from_layout_ref, chebyshev_mask_ref
from layouts import random_layout  # noqa: E402

MODES = ("outward", "inward", "causal")
DTYPES = (torch.bool, torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_random_layouts(mode, device):
    config = C2RoPEConfig(mask=mode)
    for _ in range(3):
        layout = random_layout(device=device)
        seq = layout.seq_len
        q_offset = random.randint(0, seq - 1)
        q_len = random.randint(0, seq - q_offset)
        for dtype in DTYPES:
            for window in ((0, None), (q_offset, q_len), (seq - 1, 1)):
                got = chebyshev_mask(layout, config, dtype, *window)
                want = chebyshev_mask_from_layout_ref(layout, config, dtype, *window)
                assert got.dtype == dtype and got.device == layout.device
                assert torch.equal(got, want), (dtype, window)


def _lowest_bits(dtype):
    return torch.tensor(torch.finfo(dtype).min, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_additive_values_are_exact(dtype):
    layout = random_layout(batch=1)
    while layout.seq_len < 2:  # a one-token prompt masks nothing: no finfo.min to check
        layout = random_layout(batch=1)
    mask = chebyshev_mask(layout, C2RoPEConfig(), dtype)
    values = set(mask.unique().tolist())
    assert values <= {0.0, _lowest_bits(dtype).item()} and len(values) == 2
    # +0.0, never -0.0
    assert not torch.signbit(mask[mask == 0]).any()


def test_non_contiguous_image_ids_use_the_general_rule():
    # The C API allows an image id to occur in several runs; no fast path may assume
    # otherwise. Random ids in {-1, 0, 1}, random rings and padding.
    for _ in range(5):
        batch, seq = random.randint(1, 3), random.randint(1, 40)
        valid = torch.rand(batch, seq) < 0.8
        image_id = torch.randint(-1, 2, (batch, seq), dtype=torch.int32)
        ring = torch.randint(0, 4, (batch, seq), dtype=torch.int32)
        q_offset = random.randint(0, seq - 1)
        for mode in range(3):
            for dtype in DTYPES:
                got = torch.ops.c2rope.chebyshev_mask(valid.to(torch.uint8), image_id, ring, q_offset,
                                                      seq - q_offset, mode, dtype)
                want = chebyshev_mask_ref(valid, image_id, ring, q_offset, seq - q_offset, mode, dtype)
                assert torch.equal(got, want)


def test_thread_count_does_not_change_the_result():
    layout = random_layout(batch=4)
    config = C2RoPEConfig(mask=random.choice(MODES))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = chebyshev_mask(layout, config)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, chebyshev_mask(layout, config))


def _centre_24x24_layout(prefix=5, suffix=3):
    ids = torch.tensor([[1] * prefix + [9] * 576 + [1] * suffix])
    return VisualLayout.from_input_ids(ids, 9, (24, 24)), prefix


def test_hand_checked_centre_of_24x24():
    layout, p = _centre_24x24_layout()
    centre = [p + r * 24 + c for r in (11, 12) for c in (11, 12)]
    corner = p  # top-left, outermost ring
    out = chebyshev_mask(layout, C2RoPEConfig(mask="outward"))[0, 0]
    for i in centre:
        seen = out[i].nonzero().flatten().tolist()
        assert seen == list(range(p)) + centre  # the text before + its own 2x2 ring
    assert out[corner].sum() == p + 576  # outermost ring sees the whole image
    inw = chebyshev_mask(layout, C2RoPEConfig(mask="inward"))[0, 0]
    for i in centre:
        assert inw[i, p : p + 576].all() and inw[i].sum() == p + 576
    assert inw[corner, p : p + 576].sum() == 92  # only its own (outermost) ring
    # text after the image is causal: sees everything before it
    last = layout.seq_len - 1
    assert out[last].all() and inw[last].all()
    causal = chebyshev_mask(layout, C2RoPEConfig(mask="causal"))[0, 0]
    assert torch.equal(causal, torch.ones_like(causal).tril())


def test_every_row_allows_a_key():
    for mode in MODES:
        layout = random_layout(batch=3)
        mask = chebyshev_mask(layout, C2RoPEConfig(mask=mode))
        assert mask.any(dim=-1).all()
        # padding queries see exactly themselves
        pad_rows = (~layout.valid).nonzero().tolist()
        for b, i in pad_rows:
            assert mask[b, 0, i].nonzero().flatten().tolist() == [i]


def test_decoding_window_equals_rows_of_full_mask():
    layout = random_layout(batch=2).append_text(4)
    config = C2RoPEConfig()
    full = chebyshev_mask(layout, config, torch.float16)
    step = chebyshev_mask(layout, config, torch.float16, q_offset=layout.seq_len - 1, q_len=1)
    assert torch.equal(step, full[:, :, -1:])


def test_empty():
    config = C2RoPEConfig()
    assert chebyshev_mask(VisualLayout.from_spans([], 5), config).shape == (0, 1, 5, 5)
    assert chebyshev_mask(VisualLayout.from_spans([[]], 0), config).shape == (1, 1, 0, 0)
    layout = random_layout(batch=1)
    assert chebyshev_mask(layout, config, q_offset=layout.seq_len).shape == (1, 1, 0, layout.seq_len)


def test_opcheck():
    layout = random_layout(batch=2)
    for mode in range(3):
        for dtype in (torch.bool, torch.bfloat16):
            args = (layout.valid, layout.image_id, layout.ring, 1, layout.seq_len - 2, mode, dtype)
            torch.library.opcheck(torch.ops.c2rope.chebyshev_mask.default, args)


def test_torch_compile_fullgraph():
    layout = random_layout(batch=2)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def build(valid, image_id, ring):
        mask = torch.ops.c2rope.chebyshev_mask(valid, image_id, ring, 0, valid.shape[1], 0, torch.float32)
        return mask * 2

    got = build(layout.valid, layout.image_id, layout.ring)
    assert torch.equal(got, 2 * chebyshev_mask(layout, C2RoPEConfig(), torch.float32))

    # the public function, validation included, traces into one graph too
    config = C2RoPEConfig(mask="inward")
    public = torch.compile(lambda lay: chebyshev_mask(lay, config, torch.float16, q_offset=1),
                           fullgraph=True, backend="aot_eager")
    assert torch.equal(public(layout), chebyshev_mask(layout, config, torch.float16, q_offset=1))


# ---------------------------------------------------------------- bad input

def test_public_bad_input():
    layout = random_layout(batch=1)
    config = C2RoPEConfig()
    cases = [
        (dict(layout=None), TypeError, "layout"),
        (dict(config="outward"), TypeError, "config"),
        (dict(dtype=torch.float64), TypeError, "dtype"),
        (dict(dtype=torch.int32), TypeError, "dtype"),
        (dict(dtype="bool"), TypeError, "dtype"),
        (dict(q_offset=-1), ValueError, "q_offset"),
        (dict(q_offset=layout.seq_len + 1), ValueError, "q_offset"),
        (dict(q_offset=1.5), TypeError, "q_offset"),
        (dict(q_len=layout.seq_len), ValueError, "q_len", 1),
        (dict(q_len=-1), ValueError, "q_len"),
    ]
    for case in cases:
        kwargs, error, words = case[:3]
        args = dict(layout=layout, config=config, dtype=torch.bool, q_offset=case[3] if len(case) > 3 else 0)
        args.update(kwargs)
        with pytest.raises(error, match=words):
            chebyshev_mask(**args)


def test_op_bad_input():
    v = torch.ones(2, 5, dtype=torch.bool)
    g = torch.full((2, 5), -1, dtype=torch.int32)
    r = torch.zeros(2, 5, dtype=torch.int32)
    op = torch.ops.c2rope.chebyshev_mask
    wrong_type = [
        ((v.float(), g, r, 0, 5, 0, torch.bool), "valid must be bool or uint8"),
        ((v, g.long(), r, 0, 5, 0, torch.bool), "image_id must be int32"),
        ((v, g, r.long(), 0, 5, 0, torch.bool), "ring must be int32"),
        ((v, g, r, 0, 5, 0, torch.float64), "dtype"),
    ]
    for args, words in wrong_type:
        with pytest.raises(TypeError, match=words):
            op(*args)
    bad = [
        ((v[0], g[0], r[0], 0, 5, 0, torch.bool), "valid must be 2-D"),
        ((v, g[:, :4], r, 0, 5, 0, torch.bool), "image_id shape"),
        ((v, g, r[:1], 0, 5, 0, torch.bool), "ring shape"),
        ((v, g, r, 0, 5, 3, torch.bool), "mode"),
        ((v, g, r, 0, 6, 0, torch.bool), "q_offset"),
        ((v, g, r, -1, 2, 0, torch.bool), "q_offset"),
        ((v, g, r, 3, 3, 0, torch.bool), "q_offset"),
    ]
    for args, words in bad:
        with pytest.raises(ValueError, match=words):
            op(*args)


def test_public_names():
    assert c2rope.chebyshev_mask is chebyshev_mask
