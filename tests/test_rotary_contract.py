"""The rotary contract of docs/design.md §4 and §8, where code and design must agree:
head counts of q and k are independent (the rotation is per head; grouping is the
attention's business), and the default d_spatial of small rotary dims."""
import os
import random
import re

import pytest
import torch

import c2rope
from c2rope.reference import rotary_ref

DESIGN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "design.md")


def _section(number):
    text = open(DESIGN, encoding="utf-8").read()
    return " ".join(re.search(rf"^## {number}\. .*?(?=^## )", text, re.S | re.M).group(0).split())


# ---- head counts -------------------------------------------------------------------------


@pytest.mark.parametrize("hq,hk", [(3, 2), (2, 3), (5, 3), (1, 4), (3, 0), (0, 2)])
def test_head_counts_need_not_divide(device, hq, hk):
    """As HF's apply_rotary_pos_emb: each head is rotated on its own, whatever the counts
    (0 heads skips that tensor)."""
    batch, seq, dim = random.randint(1, 3), random.randint(1, 9), random.choice([8, 16])
    q = torch.randn(batch, hq, seq, dim, device=device)
    k = torch.randn(batch, hk, seq, dim, device=device)
    cos, sin = torch.randn(2, batch, seq, dim, device=device)
    want_q, want_k = rotary_ref(q, k, cos, sin)
    got_q, got_k = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(got_q, want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_k, want_k, rtol=1e-6, atol=1e-6)
    torch.ops.c2rope.rotary_(q, k, cos, sin)  # in place too
    torch.testing.assert_close(q, want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, want_k, rtol=1e-6, atol=1e-6)


def test_design_states_head_counts_are_independent():
    bad_input = _section(8)
    assert "do not divide" not in bad_input.replace("need not divide", "")  # not listed as refused
    assert "need not divide" in bad_input


# ---- d_spatial of small rotary dims -------------------------------------------------------


@pytest.mark.parametrize("config", [c2rope.C2RoPEConfig(), c2rope.C2RoPEConfig.paper_code()],
                         ids=["default", "paper_code"])
def test_default_split_of_every_small_dim(config):
    """d_spatial = d * fraction rounded down to a multiple of 4, at least 4 (one (x, y)
    pair) from d = 6 on, 0 for d = 2 and 4 (no room for m beside a pair): every even d
    gets a valid split, so the defaults never refuse a model's head dim."""
    for dim in range(2, 162, 2):
        d_t, d_s = config.split(dim)
        expected = 0 if dim < 6 else max(4, int(dim * config.spatial_fraction) // 4 * 4)
        assert (d_t, d_s) == (dim - expected, expected), dim
        axis = config.axis_table(dim)
        assert len(axis) == dim // 2 and sum(a != 0 for a in axis) == d_s // 2
    assert config.split(128) == ((96, 32) if config.spatial_fraction == 0.25 else (116, 12))


@pytest.mark.parametrize("dim", [2, 4, 6, 8, 12, 14])
def test_small_heads_build_tables(dim):
    rope = c2rope.C2RotaryEmbedding(dim=dim)
    positions = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -0.5, 0.5], [2.0, 0.5, 0.5]]])
    cos, _ = rope(torch.zeros(1, dtype=torch.float32), positions)
    assert cos.shape == (1, 3, dim) and rope.d_spatial == (0 if dim < 6 else 4)


def test_design_states_the_small_dim_rule():
    frequencies = _section(4)
    assert "at least 4" in frequencies and "`d` of 2 or 4" in frequencies
