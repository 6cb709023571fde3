"""The fused rotation (torch.ops.c2rope.rotary / rotary_backward / rotary_) against the
float64 reference, on fresh random inputs, odd sizes and strided views; autograd,
opcheck and torch.compile."""
import pytest
import torch

import c2rope
from c2rope.reference import rotary_backward_ref, rotary_ref, rotate_half

# One output ulp (rounding once from float32 math can land one ulp from the exact value).
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}
DTYPES = list(TOL)


def make_heads(batch, heads, seq, dim, dtype, device, layout):
    """[B, H, S, D] in one of the layouts models produce."""
    if layout == "bhsd":
        return torch.randn(batch, heads, seq, dim, device=device).to(dtype)
    if layout == "bshd":  # HF: projection [B, S, H*D] viewed as [B, S, H, D].transpose(1, 2)
        return torch.randn(batch, seq, heads, dim, device=device).to(dtype).transpose(1, 2)
    if layout == "sliced":  # a slice of a fused qkv-like buffer: row stride > D
        return torch.randn(batch, heads, seq, dim + 6, device=device).to(dtype)[..., 3 : 3 + dim]
    if layout == "strided_last":  # innermost stride 2: the general-stride kernel path
        return torch.randn(batch, heads, seq, 2 * dim, device=device).to(dtype)[..., ::2]
    raise AssertionError(layout)


def make_tables(batch, seq, rot, dtype, device):
    """Arbitrary cos/sin (halves not equal), to test the general formula."""
    return (
        torch.randn(batch, seq, rot, device=device).to(dtype),
        torch.randn(batch, seq, rot, device=device).to(dtype),
    )


@pytest.mark.parametrize("seq", [1, 7, 577])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "sliced", "strided_last"])
@pytest.mark.parametrize("hk", [1, 4])  # GQA with one k head, and Hk == Hq
def test_forward_and_backward_match_reference(device, seq, dtype, layout, hk):
    batch, hq, dim = 2, 4, 32
    # Full or partial rotary and per-batch or broadcast tables, drawn per run (the
    # explicit combination is test_partial_rotary_with_broadcast_tables).
    rot = [dim, 16][int(torch.randint(0, 2, ()).item())]
    cs_batch = [1, batch][int(torch.randint(0, 2, ()).item())]
    q = make_heads(batch, hq, seq, dim, dtype, device, layout)
    k = make_heads(batch, hk, seq, dim, dtype, device, layout)
    cos, sin = make_tables(cs_batch, seq, rot, dtype, device)

    q_out, k_out = torch.ops.c2rope.rotary(q, k, cos, sin)
    q_ref, k_ref = rotary_ref(q, k, cos, sin)
    torch.testing.assert_close(q_out, q_ref, **TOL[dtype])
    torch.testing.assert_close(k_out, k_ref, **TOL[dtype])
    assert q_out.stride() == torch.empty_like(q).stride()  # the input's layout is kept

    gq, gk = torch.ops.c2rope.rotary_backward(q, k, cos, sin)
    gq_ref, gk_ref = rotary_backward_ref(q, k, cos, sin)
    torch.testing.assert_close(gq, gq_ref, **TOL[dtype])
    torch.testing.assert_close(gk, gk_ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_partial_rotary_with_broadcast_tables(device, dtype):
    q = make_heads(3, 4, 7, 40, dtype, device, "bshd")
    k = make_heads(3, 1, 7, 40, dtype, device, "sliced")
    cos, sin = make_tables(1, 7, 24, dtype, device)  # dims 24..39 pass through
    q_out, k_out = torch.ops.c2rope.rotary(q, k, cos, sin)
    q_ref, k_ref = rotary_ref(q, k, cos, sin)
    torch.testing.assert_close(q_out, q_ref, **TOL[dtype])
    torch.testing.assert_close(k_out, k_ref, **TOL[dtype])
    assert torch.equal(q_out[..., 24:], q[..., 24:]) and torch.equal(k_out[..., 24:], k[..., 24:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_tables_with_half_activations(device, dtype):
    q = make_heads(1, 3, 9, 16, dtype, device, "bshd")
    k = make_heads(1, 1, 9, 16, dtype, device, "bhsd")
    cos, sin = make_tables(1, 9, 16, torch.float32, device)
    q_out, k_out = torch.ops.c2rope.rotary(q, k, cos, sin)
    q_ref, k_ref = rotary_ref(q, k, cos, sin)
    torch.testing.assert_close(q_out, q_ref, **TOL[dtype])
    torch.testing.assert_close(k_out, k_ref, **TOL[dtype])


def test_float32_matches_hf_eager_formula_exactly(device):
    # Two products and one sum, each rounded, in HF's order; the CPU kernel is compiled
    # without FMA contraction (C11 mode), so float32 results equal HF's eager ones.
    q = make_heads(2, 4, 33, 64, torch.float32, device, "bshd")
    k = make_heads(2, 2, 33, 64, torch.float32, device, "bshd")
    cos, sin = make_tables(1, 33, 64, torch.float32, device)
    q_out, k_out = torch.ops.c2rope.rotary(q, k, cos, sin)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    q_hf, k_hf = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
    if device.type == "cpu":
        assert torch.equal(q_out, q_hf) and torch.equal(k_out, k_hf)
    else:  # device compilers may fuse into FMA: one float32 rounding apart at most
        torch.testing.assert_close(q_out, q_hf, **TOL[torch.float32])
        torch.testing.assert_close(k_out, k_hf, **TOL[torch.float32])


def test_long_head_dim_spans_several_blocks(device):
    # The CPU kernel processes pairs in blocks of 256: a 1040-dim rotation crosses blocks.
    q = make_heads(1, 2, 3, 1040, torch.float32, device, "bhsd")
    k = make_heads(1, 1, 3, 1040, torch.float32, device, "bshd")
    cos, sin = make_tables(1, 3, 1040, torch.float32, device)
    for got, want in zip(torch.ops.c2rope.rotary(q, k, cos, sin), rotary_ref(q, k, cos, sin)):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "strided_last"])
def test_inplace_matches_out_of_place(device, dtype, layout):
    q = make_heads(2, 4, 7, 32, dtype, device, layout)
    k = make_heads(2, 2, 7, 32, dtype, device, layout)
    cos, sin = make_tables(2, 7, 24, dtype, device)  # partial: dims 24..31 untouched
    want_q, want_k = torch.ops.c2rope.rotary(q, k, cos, sin)
    q_ptr = q.data_ptr()
    torch.ops.c2rope.rotary_(q, k, cos, sin)
    assert q.data_ptr() == q_ptr
    assert torch.equal(q, want_q) and torch.equal(k, want_k)


def test_public_inplace_bshd(device):
    q = torch.randn(2, 5, 4, 16, device=device)
    k = torch.randn(2, 5, 2, 16, device=device)
    cos, sin = make_tables(2, 5, 16, torch.float32, device)
    want = c2rope.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    from c2rope.rotary import apply_rotary_pos_emb_

    got = apply_rotary_pos_emb_(q.clone(), k.clone(), cos, sin, unsqueeze_dim=2)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("cs_batch", [1, 2])
def test_gradcheck_q_k_cos_sin(device, cs_batch):
    opts = dict(dtype=torch.float64, device=device)
    q = torch.randn(2, 3, 2, 6, **opts).transpose(1, 2).requires_grad_()  # [2, 2, 3, 6] BSHD view
    k = torch.randn(2, 1, 3, 6, **opts).requires_grad_()
    cos = torch.randn(cs_batch, 3, 4, **opts).requires_grad_()  # partial rotary, 4 of 6
    sin = torch.randn(cs_batch, 3, 4, **opts).requires_grad_()
    assert torch.autograd.gradcheck(c2rope.apply_rotary_pos_emb, (q, k, cos, sin))


def test_gradgradcheck_q_k(device):
    opts = dict(dtype=torch.float64, device=device)
    q = torch.randn(1, 2, 4, 6, **opts, requires_grad=True)
    k = torch.randn(1, 1, 4, 6, **opts, requires_grad=True)
    cos, sin = torch.randn(1, 4, 6, **opts), torch.randn(1, 4, 6, **opts)
    assert torch.autograd.gradgradcheck(
        lambda q, k: torch.ops.c2rope.rotary(q, k, cos, sin), (q, k)
    )


def test_gradient_of_one_output_only(device):
    q = torch.randn(1, 2, 3, 8, device=device, requires_grad=True)
    k = torch.randn(1, 1, 3, 8, device=device, requires_grad=True)
    cos, sin = make_tables(1, 3, 8, torch.float32, device)
    q_out, _ = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
    q_out.sum().backward()
    assert torch.count_nonzero(k.grad) == 0
    want, _ = rotary_backward_ref(torch.ones_like(q), torch.zeros_like(k), cos, sin)
    torch.testing.assert_close(q.grad, want)


def _opcheck_samples(device):
    q = torch.randn(2, 5, 4, 8, device=device).transpose(1, 2)
    k = torch.randn(2, 2, 5, 8, device=device)
    cos, sin = make_tables(1, 5, 6, torch.float32, device)
    return q, k, cos, sin


@pytest.mark.parametrize("needs_grad", [False, True])
def test_opcheck_rotary(device, needs_grad):
    q, k, cos, sin = _opcheck_samples(device)
    for t in (q, k, cos, sin):
        t.requires_grad_(needs_grad)
    torch.library.opcheck(torch.ops.c2rope.rotary, (q, k, cos, sin))
    torch.library.opcheck(torch.ops.c2rope.rotary_backward, (q, k, cos, sin))


def test_opcheck_rotary_inplace(device):
    q, k, cos, sin = _opcheck_samples(device)
    torch.library.opcheck(torch.ops.c2rope.rotary_, (q.clone(), k.clone(), cos, sin))


def test_torch_compile_fullgraph_forward_backward(device):
    torch._dynamo.reset()
    rope = c2rope.C2RotaryEmbedding(dim=16, device=device)

    def attention_rope(q, k, x, position_ids):
        cos, sin = rope(x, position_ids)
        return c2rope.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)

    compiled = torch.compile(attention_rope, fullgraph=True)
    q = torch.randn(2, 7, 4, 16, device=device, requires_grad=True)
    k = torch.randn(2, 7, 2, 16, device=device, requires_grad=True)
    x = torch.randn(2, 7, 8, device=device)
    pos = torch.rand(2, 7, 3, device=device) * 20  # C2RoPE triplets
    got = compiled(q, k, x, pos)
    want = attention_rope(q, k, x, pos)
    torch.testing.assert_close(got, want)
    (got[0].sum() + 2 * got[1].sum()).backward()
    grads = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    (want[0].sum() + 2 * want[1].sum()).backward()
    torch.testing.assert_close(grads, (q.grad, k.grad))


def test_empty_batch_and_sequence(device):
    for batch, seq in ((0, 5), (2, 0)):
        q = torch.randn(batch, 4, seq, 8, device=device)
        k = torch.randn(batch, 2, seq, 8, device=device)
        cos, sin = make_tables(batch, seq, 8, torch.float32, device)
        q_out, k_out = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
        assert q_out.shape == q.shape and k_out.shape == k.shape


def test_mixed_q_k_dtypes(device):
    q = torch.randn(1, 2, 5, 8, device=device)
    k = torch.randn(1, 1, 5, 8, device=device, dtype=torch.bfloat16)
    cos, sin = make_tables(1, 5, 8, torch.float32, device)
    q_out, k_out = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
    assert q_out.dtype == torch.float32 and k_out.dtype == torch.bfloat16
    q_ref, k_ref = rotary_ref(q, k, cos, sin)
    torch.testing.assert_close(q_out, q_ref, **TOL[torch.float32])
    torch.testing.assert_close(k_out, k_ref, **TOL[torch.bfloat16])


def test_gradcheck_backward_op_including_tables(device):
    # rotary_backward is itself differentiable (double backward, compiled autograd).
    opts = dict(dtype=torch.float64, device=device)
    g_q = torch.randn(2, 2, 3, 6, **opts, requires_grad=True)
    g_k = torch.randn(2, 1, 3, 6, **opts, requires_grad=True)
    cos = torch.randn(1, 3, 4, **opts, requires_grad=True)
    sin = torch.randn(1, 3, 4, **opts, requires_grad=True)
    assert torch.autograd.gradcheck(torch.ops.c2rope.rotary_backward, (g_q, g_k, cos, sin))


def test_torch_compile_fullgraph_plain_rope_positions(device):
    # 2-D integer position_ids (plain RoPE) through the module and the fused rotation.
    torch._dynamo.reset()
    rope = c2rope.C2RotaryEmbedding(dim=16, device=device)

    def attention_rope(q, k, position_ids):
        cos, sin = rope(q, position_ids)
        return c2rope.apply_rotary_pos_emb(q, k, cos, sin)

    q = torch.randn(2, 4, 5, 16, device=device, dtype=torch.bfloat16)
    k = torch.randn(2, 1, 5, 16, device=device, dtype=torch.bfloat16)
    pid = torch.arange(5, device=device).expand(2, 5)
    got = torch.compile(attention_rope, fullgraph=True)(q, k, pid)
    want = attention_rope(q, k, pid)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
