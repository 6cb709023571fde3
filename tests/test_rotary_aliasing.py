"""In-place rotation and memory aliasing (docs/design.md §8): `rotary_` refuses outputs
that share memory with each other, with themselves or with cos/sin (ValueError naming
them), and accepts views of one buffer that share nothing (a fused qkv projection split
into q and k). Decided exactly for any strided view; checked against a brute-force count
of the bytes every view touches, on the kernel path and on the generic path
(C2ROPE_DISABLE_KERNELS=1, in a subprocess)."""
import os
import random
import subprocess
import sys

import pytest
import torch

import c2rope
from c2rope.rotary import apply_rotary_pos_emb_

HERE = os.path.dirname(os.path.abspath(__file__))


def tables(seq, rot, device="cpu", batch=1):
    return torch.randn(batch, seq, rot, device=device), torch.randn(batch, seq, rot, device=device)


def test_overlapping_head_views_are_refused(device):
    for batch in (1, 2):
        t = torch.randn(batch, 3, 4, 8, device=device)
        cos, sin = tables(4, 8, device)
        before = t.clone()
        with pytest.raises(ValueError, match="q and k overlap in memory"):
            torch.ops.c2rope.rotary_(t[:, 0:2], t[:, 1:3], cos, sin)
        assert torch.equal(t, before)  # refused before anything was written
        # the same through the public in-place function, [B, S, H, D] views
        t = torch.randn(batch, 4, 3, 8, device=device)
        with pytest.raises(ValueError, match="q and k overlap in memory"):
            apply_rotary_pos_emb_(t[:, :, 0:2], t[:, :, 1:3], cos, sin, unsqueeze_dim=2)


def test_same_tensor_twice_and_tables_inside_an_output_are_refused(device):
    q = torch.randn(2, 2, 4, 8, device=device)
    cos, sin = tables(4, 8, device)
    with pytest.raises(ValueError, match="q and k overlap in memory"):
        torch.ops.c2rope.rotary_(q, q, cos, sin)
    k = torch.randn(2, 1, 4, 8, device=device)
    with pytest.raises(ValueError, match="k and cos overlap in memory"):
        torch.ops.c2rope.rotary_(q, k, k[:1, 0], sin)  # cos is k's first head
    with pytest.raises(ValueError, match="q and sin overlap in memory"):
        torch.ops.c2rope.rotary_(q, k, cos, q[1:, 1, :, :])
    expanded = torch.randn(2, 1, 4, 8, device=device).expand(2, 3, 4, 8)
    with pytest.raises(ValueError, match="q has elements that share memory"):
        torch.ops.c2rope.rotary_(expanded, k, cos, sin)
    # cos and sin may share memory: both are only read
    q2, k2 = q.clone(), k.clone()
    torch.ops.c2rope.rotary_(q2, k2, cos, cos)
    want = c2rope.apply_rotary_pos_emb(q, k, cos, cos)
    assert torch.equal(q2, want[0]) and torch.equal(k2, want[1])


@pytest.mark.parametrize("batch", [1, 3])
def test_fused_qkv_views_are_accepted(device, batch):
    """HF's fused projections: q, k and v are column slices of one [B, S, (Hq + 2 Hk) D]
    tensor, so their address ranges interleave though they share no element."""
    hq, hk, seq, dim = 4, 2, 9, 16
    qkv = torch.randn(batch, seq, (hq + 2 * hk) * dim, device=device)
    q = qkv[..., : hq * dim].view(batch, seq, hq, dim)
    k = qkv[..., hq * dim: (hq + hk) * dim].view(batch, seq, hk, dim)
    v_before = qkv[..., (hq + hk) * dim:].clone()
    cos, sin = tables(seq, dim, device)
    want_q, want_k = c2rope.apply_rotary_pos_emb(q.clone(), k.clone(), cos, sin, unsqueeze_dim=2)
    apply_rotary_pos_emb_(q, k, cos, sin, unsqueeze_dim=2)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    assert torch.equal(qkv[..., (hq + hk) * dim:], v_before)  # v untouched
    # interleaved halves of the head dim and every other head of one tensor: disjoint too
    t = torch.randn(batch, 4, seq, 2 * dim, device=device)
    torch.ops.c2rope.rotary_(t[..., :dim], t[..., dim:], cos, sin)
    torch.ops.c2rope.rotary_(t[:, 0::2], t[:, 1::2], cos, sin)


# ---- exactness against a brute-force byte count ---------------------------------------


def _random_view(buffer, sizes, rng):
    """A random strided view of `buffer` with these sizes (any strides >= 0, any offset);
    None when it does not fit."""
    strides = [rng.choice([0, 1, 2, 3, 4, 5, 8, 12, 16, 24, 40]) for _ in sizes]
    if rng.random() < 0.5:  # mostly tensor-like layouts: a dense layout, permuted, maybe padded
        step = 1 + rng.randint(0, 1)
        for dim in rng.sample(range(len(sizes)), len(sizes)):
            strides[dim] = step
            step *= sizes[dim] + rng.randint(0, 1)
    extent = sum(st * (n - 1) for st, n in zip(strides, sizes)) + 1
    if extent > buffer.numel():
        return None
    return buffer.as_strided(sizes, strides, rng.randint(0, buffer.numel() - extent))


def _elements(t):
    """Set of storage offsets a view touches, and whether one repeats (brute force)."""
    index = torch.arange(t.untyped_storage().nbytes() // t.element_size()).as_strided(
        t.shape, t.stride(), t.storage_offset())
    flat = index.flatten().tolist()
    return set(flat), len(set(flat)) != len(flat)


def exactness_cases(seed, count):
    """rotary_ on random views of one buffer: refused exactly when some output element
    shares memory with another element written or read; otherwise equal to the out-of-place
    rotation. Returns (refused, accepted) counts."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    refused = accepted = 0
    for _ in range(count):
        buffer = torch.randn(160)
        batch, seq, dim = rng.randint(1, 2), rng.randint(1, 3), rng.choice([2, 4])
        q = _random_view(buffer, (batch, rng.randint(1, 3), seq, dim), rng)
        k = _random_view(buffer, (batch, rng.randint(1, 3), seq, dim), rng)
        if q is None or k is None:
            continue
        from_buffer = rng.random() < 0.3  # the tables inside the same buffer sometimes
        if from_buffer:
            cos = buffer.as_strided((1, seq, dim), (0, dim, 1), rng.randint(0, buffer.numel() - seq * dim))
        else:
            cos = torch.randn(1, seq, dim)
        sin = torch.randn(1, seq, dim)
        q_set, q_rep = _elements(q)
        k_set, k_rep = _elements(k)
        cos_set = _elements(cos)[0] if from_buffer else set()
        clash = q_rep or k_rep or bool(q_set & k_set) or bool((q_set | k_set) & cos_set)
        want_q, want_k = c2rope.apply_rotary_pos_emb(q.clone(), k.clone(), cos.clone(), sin)
        try:
            torch.ops.c2rope.rotary_(q, k, cos, sin)
        except ValueError as error:
            assert clash, f"refused disjoint views: {q.shape} {q.stride()} @{q.storage_offset()}, " \
                          f"{k.shape} {k.stride()} @{k.storage_offset()}: {error}"
            assert "overlap" in str(error) or "share memory" in str(error)
            refused += 1
            continue
        assert not clash, f"accepted overlapping views: {q.shape} {q.stride()} @{q.storage_offset()}, " \
                          f"{k.shape} {k.stride()} @{k.storage_offset()}"
        torch.testing.assert_close(q, want_q, rtol=0, atol=0)
        torch.testing.assert_close(k, want_k, rtol=0, atol=0)
        accepted += 1
    return refused, accepted


def test_aliasing_decided_exactly_kernel_path(_fresh_seed):
    refused, accepted = exactness_cases(_fresh_seed, 1500)
    assert refused > 100 and accepted > 100  # both outcomes are really exercised


def test_aliasing_decided_exactly_generic_path(_fresh_seed):
    code = ("import sys, test_rotary_aliasing as t\n"
            "from c2rope._ops.paths import op_path\n"
            "assert op_path('rotary_', 'cpu') == 'generic', op_path('rotary_', 'cpu')\n"
            f"r, a = t.exactness_cases({_fresh_seed}, 800)\n"
            "assert r > 50 and a > 50, (r, a)\n")
    env = dict(os.environ, C2ROPE_DISABLE_KERNELS="1",
               PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
