"""Fake kernels and autograd of torch.ops.c2rope.rotary / rotary_backward / rotary_
(the in-place op's autograd is in C++: csrc/torch/rotary_inplace_autograd.cpp).

The gradient of the rotation with respect to q and k is the transposed rotation (the
`rotary_backward` op, so torch.compile traces it like any op). Gradients with respect
to cos and sin, needed only when they require grad (learned or scaled tables), follow
from HF's formula out = x * cos + rotate_half(x) * sin on the first R dims:
    grad_cos = sum over heads of g * x,    grad_sin = sum over heads of g * rotate_half(x),
summed over the batch too when cos/sin were broadcast from batch 1.
"""
import torch

from .devices import check_one_device


def _check_rotary_shapes(q, k, cos, sin, op="c2rope.rotary"):
    check_one_device(op, q=q, k=k, cos=cos, sin=sin)
    torch._check(q.dim() == 4 and k.dim() == 4, lambda: f"{op}: q and k must be 4-D")
    torch._check(cos.dim() == 3, lambda: f"{op}: cos must be 3-D [B or 1, S, R]")
    torch._check(cos.shape == sin.shape, lambda: f"{op}: cos and sin shapes differ")


@torch.library.register_fake("c2rope::rotary")
def _rotary_fake(q, k, cos, sin):
    _check_rotary_shapes(q, k, cos, sin)
    # empty_like: same strides as the real op's outputs.
    return torch.empty_like(q), torch.empty_like(k)


@torch.library.register_fake("c2rope::rotary_backward")
def _rotary_backward_fake(grad_q, grad_k, cos, sin):
    _check_rotary_shapes(grad_q, grad_k, cos, sin, "c2rope.rotary_backward")
    return torch.empty_like(grad_q), torch.empty_like(grad_k)


@torch.library.register_fake("c2rope::rotary_")
def _rotary_inplace_fake(q, k, cos, sin):
    _check_rotary_shapes(q, k, cos, sin, "c2rope.rotary_")
    return None


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _table_grad(grads, inputs, table, use_rotate_half):
    """sum over heads (and over the batch if `table` was broadcast) of g * f(x)[..., :R]."""
    rot = table.shape[-1]
    math_dtype = torch.float64 if table.dtype == torch.float64 else torch.float32
    total = None
    for g, x in zip(grads, inputs):
        if x.shape[1] == 0:
            continue
        xr = x[..., :rot].to(math_dtype)
        if use_rotate_half:
            xr = _rotate_half(xr)
        term = (g[..., :rot].to(math_dtype) * xr).sum(dim=1)  # [B, S, R]
        total = term if total is None else total + term
    if total is None:
        return torch.zeros_like(table)
    if table.shape[0] == 1 and total.shape[0] != 1:
        total = total.sum(dim=0, keepdim=True)
    return total.to(table.dtype)


def _setup_context(ctx, inputs, output):
    q, k, cos, sin = inputs
    table_grads = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
    # q and k are kept only when the tables need a gradient.
    ctx.save_for_backward(cos, sin, q if table_grads else None, k if table_grads else None)
    ctx.q_meta = (q.shape, q.dtype, q.device)
    ctx.k_meta = (k.shape, k.dtype, k.device)


def _zeros(meta):
    shape, dtype, device = meta
    return torch.zeros(shape, dtype=dtype, device=device)


def _backward(ctx, grad_q, grad_k):
    cos, sin, q, k = ctx.saved_tensors
    # An output that did not reach the loss has no gradient.
    grad_q = _zeros(ctx.q_meta) if grad_q is None else grad_q
    grad_k = _zeros(ctx.k_meta) if grad_k is None else grad_k
    dq = dk = dcos = dsin = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        dq, dk = torch.ops.c2rope.rotary_backward(grad_q, grad_k, cos, sin)
    if ctx.needs_input_grad[2]:
        dcos = _table_grad((grad_q, grad_k), (q, k), cos, use_rotate_half=False)
    if ctx.needs_input_grad[3]:
        dsin = _table_grad((grad_q, grad_k), (q, k), sin, use_rotate_half=True)
    return dq, dk, dcos, dsin


torch.library.register_autograd("c2rope::rotary", _backward, setup_context=_setup_context)


def _setup_context_backward(ctx, inputs, output):
    grad_q, grad_k, cos, sin = inputs
    table_grads = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
    ctx.save_for_backward(
        cos, sin, grad_q if table_grads else None, grad_k if table_grads else None
    )
    ctx.q_meta = (grad_q.shape, grad_q.dtype, grad_q.device)
    ctx.k_meta = (grad_k.shape, grad_k.dtype, grad_k.device)


def _backward_of_backward(ctx, gg_q, gg_k):
    # rotary_backward is linear in (grad_q, grad_k) and its transpose is the forward
    # rotation. For the tables, out = g * cos - rotate_half(g * sin) gives
    #   d/dcos = sum g * u,   d/dsin = sum g * rotate_half(u)   (u: upstream gradient).
    cos, sin, g_q, g_k = ctx.saved_tensors
    gg_q = _zeros(ctx.q_meta) if gg_q is None else gg_q
    gg_k = _zeros(ctx.k_meta) if gg_k is None else gg_k
    d_gq = d_gk = dcos = dsin = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        d_gq, d_gk = torch.ops.c2rope.rotary(gg_q, gg_k, cos, sin)
    if ctx.needs_input_grad[2]:
        dcos = _table_grad((gg_q, gg_k), (g_q, g_k), cos, use_rotate_half=False)
    if ctx.needs_input_grad[3]:
        dsin = _table_grad((g_q, g_k), (gg_q, gg_k), sin, use_rotate_half=True)
    return d_gq, d_gk, dcos, dsin


torch.library.register_autograd(
    "c2rope::rotary_backward", _backward_of_backward, setup_context=_setup_context_backward
)
