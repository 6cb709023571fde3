"""Bad input to the rotary entry points: a clear ValueError/TypeError naming the argument
(docs/design.md §8), from the public functions and, one level down, from the ops' C checks."""
import pytest
import torch

import c2rope


def qkcs(device, batch=2, hq=4, hk=2, seq=5, dim=8, rot=8, cs_batch=None, dtype=torch.float32):
    cs_batch = batch if cs_batch is None else cs_batch
    return (
        torch.randn(batch, hq, seq, dim, device=device, dtype=dtype),
        torch.randn(batch, hk, seq, dim, device=device, dtype=dtype),
        torch.randn(cs_batch, seq, rot, device=device, dtype=dtype),
        torch.randn(cs_batch, seq, rot, device=device, dtype=dtype),
    )


# ---- apply_rotary_pos_emb -------------------------------------------------------------


def test_integer_q(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(TypeError, match="q must be float"):
        c2rope.apply_rotary_pos_emb(q.to(torch.int32), k, cos, sin)


def test_not_a_tensor(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        c2rope.apply_rotary_pos_emb(q, k.tolist(), cos, sin)


def test_q_k_sequence_mismatch(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="k shape does not match q"):
        c2rope.apply_rotary_pos_emb(q, k[:, :, :3], cos, sin)


def test_q_k_head_dim_mismatch(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="k shape does not match q"):
        c2rope.apply_rotary_pos_emb(q, k[..., :6], cos[..., :6], sin[..., :6])


def test_q_not_4d(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="q must be 4-D"):
        c2rope.apply_rotary_pos_emb(q[0], k, cos, sin)


def test_cos_sin_shape_mismatch(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="cos shape .* differs from sin"):
        c2rope.apply_rotary_pos_emb(q, k, cos, sin[..., :6])


def test_cos_sin_dtype_mismatch(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(TypeError, match="cos dtype .* differs from sin"):
        c2rope.apply_rotary_pos_emb(q, k, cos, sin.double())


def test_cos_sequence_mismatch(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="cos sequence length"):
        c2rope.apply_rotary_pos_emb(q, k, cos[:, :4], sin[:, :4])


def test_cos_batch_not_one_or_b(device):
    q, k, cos, sin = qkcs(device, batch=3, cs_batch=2)
    with pytest.raises(ValueError, match="cos batch 2"):
        c2rope.apply_rotary_pos_emb(q, k, cos, sin)


def test_odd_rotary_dim(device):
    q, k, cos, sin = qkcs(device, rot=7)
    with pytest.raises(ValueError, match="rotary dim"):
        c2rope.apply_rotary_pos_emb(q, k, cos, sin)


def test_rotary_dim_larger_than_head_dim(device):
    q, k, cos, sin = qkcs(device, dim=8, rot=10)
    with pytest.raises(ValueError, match="rotary dim"):
        c2rope.apply_rotary_pos_emb(q, k, cos, sin)


def test_bad_unsqueeze_dim(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="unsqueeze_dim"):
        c2rope.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=3)


def test_tensors_on_different_devices(device):
    q, k, cos, sin = qkcs(device)
    other = torch.device("meta")  # a device that always exists and differs
    with pytest.raises(ValueError, match="sin is on meta"):
        c2rope.apply_rotary_pos_emb(q, k, cos, sin.to(other))


def test_inplace_refuses_leaves_requiring_grad(device):
    from c2rope.rotary import apply_rotary_pos_emb_

    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="q is a leaf that requires grad"):
        apply_rotary_pos_emb_(q.requires_grad_(), k, cos, sin)


# ---- the ops' own checks (reachable from Python without the wrapper) -----------------


def test_op_rejects_mismatched_shapes_without_crashing(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(ValueError, match="k shape"):
        torch.ops.c2rope.rotary(q, k[:, :, :2], cos, sin)
    with pytest.raises(ValueError, match="cos batch"):
        torch.ops.c2rope.rotary(q, k, cos[:0], sin[:0])
    with pytest.raises(ValueError, match="rotary dim"):
        torch.ops.c2rope.rotary_backward(q, k, cos[..., :3], sin[..., :3])


def test_op_rejects_integer_and_mixed_dtypes(device):
    q, k, cos, sin = qkcs(device)
    with pytest.raises(TypeError):
        torch.ops.c2rope.rotary(q.long(), k.long(), cos, sin)
    with pytest.raises(TypeError, match="k dtype"):
        torch.ops.c2rope.rotary(q, k.double(), cos, sin)


def test_op_inplace_rejects_overlapping_outputs(device):
    q, k, cos, sin = qkcs(device)
    expanded = torch.randn(2, 1, 5, 8, device=device).expand(2, 4, 5, 8)
    with pytest.raises(ValueError, match="q has elements that share memory"):
        torch.ops.c2rope.rotary_(expanded, k, cos, sin)
    with pytest.raises(ValueError, match="q and k overlap in memory"):
        torch.ops.c2rope.rotary_(q, q, cos, sin)


def test_op_out_of_place_accepts_expanded_inputs(device):
    # Broadcast (stride-0) inputs are fine to read; the outputs are fresh and dense.
    q, k, cos, sin = qkcs(device)
    expanded = q[:, :1].expand(2, 4, 5, 8)
    out, _ = torch.ops.c2rope.rotary(expanded, k, cos, sin)
    want, _ = torch.ops.c2rope.rotary(expanded.contiguous(), k, cos, sin)
    assert torch.equal(out, want)


# ---- rotary_cos_sin / C2RotaryEmbedding ----------------------------------------------


def test_float16_positions(device):
    with pytest.raises(TypeError, match="positions must be"):
        c2rope.rotary_cos_sin(torch.zeros(1, 3, 3, device=device, dtype=torch.float16),
                              torch.ones(2, device=device), [0, 1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_positions(device, bad):
    pos = torch.zeros(1, 3, 3, device=device)
    pos[0, 1, 2] = bad
    with pytest.raises(ValueError, match="position_ids contains NaN or Inf"):
        c2rope.C2RotaryEmbedding(dim=16, device=device)(torch.zeros(1, 3, 4, device=device), pos)
    with pytest.raises(ValueError, match="positions contains NaN or Inf"):
        c2rope.rotary_cos_sin(pos, torch.ones(2, device=device), [0, 2])


def test_axis_out_of_range(device):
    with pytest.raises(ValueError, match=r"axis entries must be in \[0, 2\)"):
        c2rope.rotary_cos_sin(torch.zeros(1, 3, 2, device=device), torch.ones(2, device=device), [0, 2])
    with pytest.raises(ValueError, match="axis entries"):
        c2rope.rotary_cos_sin(torch.zeros(1, 3, 2, device=device), torch.ones(2, device=device),
                              torch.tensor([0, -1], device=device))


def test_axis_length_mismatch(device):
    with pytest.raises(ValueError, match="one entry per inv_freq slot"):
        c2rope.rotary_cos_sin(torch.zeros(1, 3, 2, device=device), torch.ones(3, device=device), [0, 1])


def test_unsupported_table_dtype(device):
    with pytest.raises(TypeError, match="dtype must be"):
        c2rope.rotary_cos_sin(torch.zeros(1, 3, 1, device=device), torch.ones(2, device=device),
                              [0, 0], dtype=torch.int32)


def test_positions_inv_freq_on_different_devices(device):
    with pytest.raises(ValueError, match="inv_freq is on meta"):
        c2rope.rotary_cos_sin(torch.zeros(1, 3, 1, device=device),
                              torch.ones(2, device="meta"), [0, 0])


def test_module_rejects_wrong_position_shape(device):
    rope = c2rope.C2RotaryEmbedding(dim=16, device=device)
    x = torch.zeros(1, 3, 4, device=device)
    with pytest.raises(ValueError, match=r"position_ids must be \[B, S\] or \[B, S, 3\]"):
        rope(x, torch.zeros(1, 3, 2, device=device))
    with pytest.raises(ValueError, match="position_ids must be"):
        rope(x, torch.zeros(3, device=device, dtype=torch.long))


def test_module_rejects_integer_x(device):
    rope = c2rope.C2RotaryEmbedding(dim=16, device=device)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        rope(torch.zeros(1, 3, 4, device=device, dtype=torch.long),
             torch.zeros(1, 3, device=device, dtype=torch.long))


def test_module_empty_sequence_returns_empty(device):
    rope = c2rope.C2RotaryEmbedding(dim=16, device=device)
    cos, sin = rope(torch.zeros(2, 0, 4, device=device), torch.zeros(2, 0, 3, device=device))
    assert cos.shape == (2, 0, 16) and sin.shape == (2, 0, 16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=15), "dim must be a positive even int"),
        (dict(dim=0), "dim must be a positive even int"),
        (dict(dim=64, d_temporal=40, d_spatial=20), "d_temporal \\+ d_spatial"),
        (dict(dim=64, d_temporal=58, d_spatial=6), "d_spatial must be a non-negative multiple of 4"),
        (dict(dim=64, d_temporal=0, d_spatial=64), "d_temporal must be an even int >= 2"),
        (dict(dim=64, base=1.0), "base must be"),
    ],
)
def test_module_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        c2rope.C2RotaryEmbedding(**kwargs)


def test_module_config_type():
    with pytest.raises(TypeError, match="config must be a C2RoPEConfig"):
        c2rope.C2RotaryEmbedding(dim=16, config={"d_spatial": 4})


def test_from_hf_needs_inv_freq():
    with pytest.raises(TypeError, match="inv_freq"):
        c2rope.C2RotaryEmbedding.from_hf(torch.nn.Linear(2, 2))


# ---- meta tensors -------------------------------------------------------------------


def test_module_on_meta_inputs():
    # Shapes only: value checks (NaN positions) are skipped, nothing is read back.
    rope = c2rope.C2RotaryEmbedding(dim=16, device="meta")
    x = torch.empty(2, 5, 8, device="meta", dtype=torch.bfloat16)
    for pos in (torch.empty(2, 5, 3, device="meta"), torch.empty(2, 5, device="meta", dtype=torch.long)):
        cos, sin = rope(x, pos)
        assert cos.device.type == "meta" and cos.shape == (2, 5, 16) and sin.dtype == torch.bfloat16


def test_op_refuses_meta_mixed_with_cpu():
    q, k, cos, sin = qkcs("cpu")
    with pytest.raises(ValueError, match="k is on cpu but q is on meta"):
        torch.ops.c2rope.rotary(q.to("meta"), k, cos, sin)
    with pytest.raises(ValueError, match="sin is on meta but q is on cpu"):
        torch.ops.c2rope.rotary_backward(q, k, cos, sin.to("meta"))
    with pytest.raises(ValueError, match="cos is on meta"):
        torch.ops.c2rope.rotary_(q, k, cos.to("meta"), sin)
    with pytest.raises(ValueError, match="inv_freq is on meta"):
        torch.ops.c2rope.cos_sin(torch.zeros(1, 2, 1), torch.ones(2, device="meta"),
                                 torch.zeros(2, dtype=torch.int32), 1.0, torch.float32)
    valid = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="ring is on meta"):
        torch.ops.c2rope.chebyshev_mask(valid, torch.zeros(1, 4, dtype=torch.int32),
                                        torch.zeros(1, 4, dtype=torch.int32, device="meta"), 0, 4, 0, torch.bool)
