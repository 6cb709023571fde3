"""Run by test_generic_ops.py in a subprocess with C2ROPE_DISABLE_KERNELS=1: the CPU
takes the generic path, as a device without a c2rope kernel would.

    python tests/generic_path_check.py SEED OUT_FILE

Checks the routing, opcheck, torch.compile(fullgraph=True) and gradcheck on the generic
path, then saves compute(SEED), which the parent compares with its kernels' results.
"""
import random
import sys

import torch

import c2rope
from c2rope import C2RoPEConfig
from c2rope._ops.paths import OPS, op_path

TABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _inputs(gen, dtype):
    q = torch.randn(2, 7, 4, 16, generator=gen).to(dtype).transpose(1, 2)  # BSHD viewed as BHSD
    k = torch.randn(2, 2, 7, 20, generator=gen).to(dtype)[..., 2:18]  # sliced rows, GQA
    cos = torch.randn(1, 7, 12, generator=gen).to(dtype)  # partial rotary, broadcast batch
    sin = torch.randn(1, 7, 12, generator=gen).to(dtype)
    return q, k, cos, sin


def compute(seed):
    """Results that are bit-identical on the kernel and the generic path."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for dtype in TABLE_DTYPES:
        q, k, cos, sin = _inputs(gen, dtype)
        out[f"rotary_q_{dtype}"], out[f"rotary_k_{dtype}"] = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
        out[f"backward_{dtype}"] = torch.ops.c2rope.rotary_backward(q, k, cos, sin)[0]
        q2, k2 = q.clone(), k.clone()
        torch.ops.c2rope.rotary_(q2, k2, cos, sin)
        out[f"inplace_{dtype}"] = torch.cat([q2.flatten(), k2.flatten()])
        # autograd through the registered formulas, tables included
        leaves = [t.detach().double().requires_grad_() for t in (q, k, cos, sin)]
        q_out, k_out = c2rope.apply_rotary_pos_emb(*leaves)
        (q_out.sin().sum() + (k_out * 3).sum()).backward()
        for name, t in zip("qkcs", leaves):
            out[f"grad_{name}_{dtype}"] = t.grad
    rope = c2rope.C2RotaryEmbedding(dim=16)
    x = torch.randn(2, 9, 8, generator=gen)
    pos = (torch.randint(-20, 300, (2, 9, 3), generator=gen) / 2).float()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out[f"module_{dtype}"] = torch.cat(rope(x.to(dtype), pos))
        out[f"module_text_{dtype}"] = torch.cat(rope(x.to(dtype), torch.arange(9).expand(2, 9)))
    from layouts import random_layout

    random.seed(seed)  # random_layout draws from Python's generator

    layout = random_layout(batch=3)
    for mask in ("outward", "inward", "causal"):
        for dtype in (torch.bool, torch.bfloat16):
            out[f"mask_{mask}_{dtype}"] = c2rope.chebyshev_mask(layout, C2RoPEConfig(mask=mask), dtype,
                                                                q_offset=1)
    return out


def _check_generic_path():
    assert all(op_path(op, "cpu") == "generic" for op in OPS), "CPU kernels are registered"
    gen = torch.Generator().manual_seed(0)
    q, k, cos, sin = _inputs(gen, torch.float32)
    for needs_grad in (False, True):
        args = [t.clone().requires_grad_(needs_grad) for t in (q, k, cos, sin)]
        torch.library.opcheck(torch.ops.c2rope.rotary, args)
        torch.library.opcheck(torch.ops.c2rope.rotary_backward, args)
    torch.library.opcheck(torch.ops.c2rope.rotary_, (q.clone(), k.clone(), cos, sin))
    positions, inv_freq = torch.rand(2, 5, 3) * 50, torch.rand(6)
    axis = torch.tensor([0, 1, 2, 2, 1, 0], dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        torch.library.opcheck(torch.ops.c2rope.cos_sin, (positions, inv_freq, axis, 1.0, dtype))
    valid = torch.rand(2, 11) < 0.9
    image_id = torch.tensor([[-1, 0, 0, 0, 0, -1, 1, 1, 1, 1, -1]] * 2, dtype=torch.int32)
    ring = torch.tensor([[0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0]] * 2, dtype=torch.int32)
    for mode in range(3):
        torch.library.opcheck(torch.ops.c2rope.chebyshev_mask,
                              (valid, image_id, ring, 2, 8, mode, torch.float16))

    # torch.compile(fullgraph=True): module, fused rotation and mask in one graph.
    rope = c2rope.C2RotaryEmbedding(dim=16)

    def step(q, k, x, pos, valid, image_id, ring):
        cos, sin = rope(x, pos)
        q_out, k_out = c2rope.apply_rotary_pos_emb(q, k, cos[..., :12], sin[..., :12])
        mask = torch.ops.c2rope.chebyshev_mask(valid, image_id, ring, 0, 7, 0, torch.float32)
        return q_out, k_out, mask[..., :7]

    x, pos = torch.randn(2, 7, 8), torch.rand(2, 7, 3) * 20
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(qg, kg, x, pos, valid, image_id, ring)
    want = step(q, k, x, pos, valid, image_id, ring)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    (got[0].sum() + got[1].sum()).backward()
    assert qg.grad is not None and kg.grad is not None

    opts = dict(dtype=torch.float64)
    leaves = [torch.randn(2, 2, 3, 6, **opts), torch.randn(2, 1, 3, 6, **opts),
              torch.randn(1, 3, 4, **opts), torch.randn(1, 3, 4, **opts)]
    leaves = [t.requires_grad_() for t in leaves]
    assert torch.autograd.gradcheck(c2rope.apply_rotary_pos_emb, leaves)
    assert torch.autograd.gradgradcheck(lambda q, k: torch.ops.c2rope.rotary(q, k, *leaves[2:]), leaves[:2])

    # the in-place op's autograd on the generic path: a non-leaf gets the rotation's gradient
    base = leaves[0].detach().clone().requires_grad_()
    h = base * 2
    torch.ops.c2rope.rotary_(h, leaves[1].detach().clone(), leaves[2].detach(), leaves[3].detach())
    h.sum().backward()
    want, _ = torch.ops.c2rope.rotary_backward(torch.full_like(h, 2.0), leaves[1][:, :0].detach(),
                                               leaves[2].detach(), leaves[3].detach())
    assert torch.allclose(base.grad, want)


if __name__ == "__main__":
    seed, out_file = int(sys.argv[1]), sys.argv[2]
    _check_generic_path()
    torch.save(compute(seed), out_file)
    print("generic path ok")
