"""torch.ops.c2rope.rotary_ under autograd behaves as torch's own in-place ops: a leaf
that requires grad is refused, a non-leaf (or a view of one) gets the rotation's gradient,
and the version counter is bumped so a stale saved tensor is detected."""
import pytest
import torch

from c2rope.reference import rotary_ref


def qkcs(device, dtype=torch.float64):
    opts = dict(device=device, dtype=dtype)
    return (torch.randn(2, 3, 5, 8, **opts), torch.randn(2, 1, 5, 8, **opts),
            torch.randn(1, 5, 6, **opts), torch.randn(1, 5, 6, **opts))


def test_leaf_requiring_grad_is_refused(device):
    q, k, cos, sin = qkcs(device)
    q_before = q.clone()
    with pytest.raises(ValueError, match="k is a leaf that requires grad"):
        torch.ops.c2rope.rotary_(q, k.requires_grad_(), cos, sin)
    assert torch.equal(q, q_before)  # refused before anything was written
    with torch.no_grad():  # as torch: fine without grad mode
        torch.ops.c2rope.rotary_(q, k, cos, sin)
    assert not torch.equal(q, q_before)


def _loss(q, k):
    weights = torch.arange(q.numel(), dtype=q.dtype, device=q.device).reshape(q.shape).cos()
    return (q * weights).sum() + k.pow(2).sum()


@pytest.mark.parametrize("tables_need_grad", [False, True])
def test_non_leaf_gradients_equal_out_of_place(device, tables_need_grad):
    q0, k0, cos0, sin0 = qkcs(device)

    def run(inplace):
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        cos, sin = cos0.clone().requires_grad_(tables_need_grad), sin0.clone().requires_grad_(tables_need_grad)
        qh, kh = q * 1.5, k - 0.25  # non-leaves with a history
        if inplace:
            torch.ops.c2rope.rotary_(qh, kh, cos, sin)
            assert qh.grad_fn is not None and "Copy" in type(qh.grad_fn).__name__
            out = (qh, kh)
        else:
            out = torch.ops.c2rope.rotary(qh, kh, cos, sin)
        _loss(*out).backward()
        grads = [q.grad, k.grad] + ([cos.grad, sin.grad] if tables_need_grad else [])
        return out, grads

    (got_out, got_grads), (want_out, want_grads) = run(True), run(False)
    assert torch.equal(got_out[0], want_out[0]) and torch.equal(got_out[1], want_out[1])
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_view_of_a_non_leaf(device):
    # HF's layout: q is a transposed view of a projection output.
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, device=device, requires_grad=True)
    _, k, cos, sin = qkcs(device)
    proj = x * 2
    q = proj.transpose(1, 2)
    want_q, _ = rotary_ref(q.detach(), k, cos, sin)
    torch.ops.c2rope.rotary_(q, k, cos, sin)
    torch.testing.assert_close(proj.transpose(1, 2).detach(), want_q)
    proj.sum().backward()  # through the base: CopySlices of the in-place rotation
    g, _ = torch.ops.c2rope.rotary_backward(torch.full_like(q, 2.0), k[:, :0], cos, sin)
    torch.testing.assert_close(x.grad, g.transpose(1, 2))


def test_version_counter_is_bumped(device):
    q, k, cos, sin = qkcs(device)
    before = q._version, k._version
    torch.ops.c2rope.rotary_(q, k, cos, sin)
    assert q._version > before[0] and k._version > before[1]


def test_backward_through_a_modified_saved_tensor_raises(device):
    w = torch.randn(2, 3, 5, 8, dtype=torch.float64, device=device, requires_grad=True)
    q, k, cos, sin = qkcs(device)
    loss = (w * q).sum()  # saves q for w's gradient
    torch.ops.c2rope.rotary_(q, k, cos, sin)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inference_mode(device):
    q, k, cos, sin = qkcs(device)
    want = torch.ops.c2rope.rotary(q, k, cos, sin)
    with torch.inference_mode():
        qi, ki = q.clone(), k.clone()
        torch.ops.c2rope.rotary_(qi, ki, cos, sin)
    assert torch.equal(qi, want[0]) and torch.equal(ki, want[1])
