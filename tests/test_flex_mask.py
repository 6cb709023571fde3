"""chebyshev_mask_mod / chebyshev_block_mask against the dense mask, FlexAttention
against SDPA, and composition with HF's masking_utils."""
import random

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from c2rope import C2RoPEConfig, VisualLayout, chebyshev_block_mask, chebyshev_mask, chebyshev_mask_mod
from layouts import random_layout  # noqa: E402

MODES = ("outward", "inward", "causal")


@pytest.mark.parametrize("mode", MODES)
def test_mask_mod_matches_dense(mode):
    layout, config = random_layout(batch=2), C2RoPEConfig(mask=mode)
    seq = layout.seq_len
    q_offset = random.randint(0, seq - 1)
    mod = chebyshev_mask_mod(layout, config, q_offset=q_offset)
    got = create_mask(mod, layout.batch_size, 1, seq - q_offset, seq, device="cpu")
    assert torch.equal(got, chebyshev_mask(layout, config, q_offset=q_offset))


@pytest.mark.parametrize("mode", MODES)
def test_block_mask_matches_create_block_mask(mode):
    layout, config = random_layout(batch=2), C2RoPEConfig(mask=mode)
    seq = layout.seq_len
    block = random.choice((8, 16, 32))
    q_offset = random.randint(0, seq - 1)
    q_len = random.randint(1, seq - q_offset)
    kv_len = seq + random.choice((0, 0, 5))  # a longer (static) cache masks the extra keys
    ours = chebyshev_block_mask(layout, config, q_len=q_len, kv_len=kv_len, q_offset=q_offset, block_size=block)
    mod = chebyshev_mask_mod(layout, config, q_offset=q_offset)
    theirs = create_block_mask(mod, layout.batch_size, None, q_len, kv_len, device="cpu", BLOCK_SIZE=block)
    assert ours.shape == theirs.shape
    for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    # element level: the block mask's mask_mod over its own shape is the dense mask
    dense = create_mask(ours.mask_mod, layout.batch_size, 1, q_len, kv_len, device="cpu")
    want = chebyshev_mask(layout, config, q_offset=q_offset, q_len=q_len)
    assert torch.equal(dense[..., :seq], want) and not dense[..., seq:].any()


def test_block_mask_in_chunks(monkeypatch):
    # Force many slabs of query rows: the classification must not depend on them.
    import c2rope.mask as mask_module

    layout, config = random_layout(batch=2), C2RoPEConfig()
    whole = chebyshev_block_mask(layout, config, block_size=8)
    monkeypatch.setattr(mask_module, "_BLOCK_MASK_CHUNK_BYTES", 1)
    sliced = chebyshev_block_mask(layout, config, block_size=8)
    assert torch.equal(whole.to_dense(), sliced.to_dense())
    assert torch.equal(whole.full_kv_num_blocks, sliced.full_kv_num_blocks)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("mode", MODES)
def test_flex_attention_equals_sdpa(mode):
    layout, config = random_layout(batch=2), C2RoPEConfig(mask=mode)
    batch, seq = layout.batch_size, layout.seq_len
    q, k, v = (torch.randn(batch, 2, seq, 16, dtype=torch.float64) for _ in range(3))
    block_mask = chebyshev_block_mask(layout, config, block_size=16)
    out = flex_attention(q, k, v, block_mask=block_mask)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=chebyshev_mask(layout, config))
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


def test_composes_with_hf_masking_utils():
    masking_utils = pytest.importorskip("transformers.masking_utils")
    layout, config = random_layout(batch=2), C2RoPEConfig()
    mod = chebyshev_mask_mod(layout, config)
    combined = masking_utils.and_masks(mod, masking_utils.causal_mask_function)
    seq = layout.seq_len
    got = create_mask(combined, layout.batch_size, 1, seq, seq, device="cpu")
    assert torch.equal(got, chebyshev_mask(layout, config) & torch.ones(seq, seq, dtype=torch.bool).tril())
    # HF's sdpa_mask evaluates mask functions with broadcast index tensors (no vmap).
    hf = masking_utils.sdpa_mask(
        batch_size=layout.batch_size, q_length=seq, kv_length=seq, mask_function=mod,
        allow_is_causal_skip=False, device="cpu",
    )
    assert torch.equal(hf.expand(-1, 1, -1, -1), chebyshev_mask(layout, config))


def test_empty_layouts():
    config = C2RoPEConfig()
    for layout, q_offset in ((VisualLayout.from_spans([], 5), 0), (VisualLayout.from_spans([[]], 0), 0),
                             (VisualLayout.from_spans([[]], 5), 5)):
        block_mask = chebyshev_block_mask(layout, config, q_offset=q_offset)
        assert block_mask.shape == (layout.batch_size, 1, layout.seq_len - q_offset, layout.seq_len)


def test_bad_input():
    layout, config = random_layout(batch=1), C2RoPEConfig()
    with pytest.raises(TypeError, match="layout"):
        chebyshev_mask_mod("layout", config)
    with pytest.raises(ValueError, match="q_offset"):
        chebyshev_mask_mod(layout, config, q_offset=-1)
    with pytest.raises(ValueError, match="kv_len"):
        chebyshev_block_mask(layout, config, kv_len=layout.seq_len - 1)
    with pytest.raises(ValueError, match="block_size"):
        chebyshev_block_mask(layout, config, block_size=0)
    with pytest.raises(ValueError, match="q_len"):
        chebyshev_block_mask(layout, config, q_len=layout.seq_len + 1)
