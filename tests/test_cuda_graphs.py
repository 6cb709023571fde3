"""CUDA-graph capture and replay of every c2rope op.

A CUDA graph records kernel launches on the stream that is being captured; an op that
launched on another stream, synchronised, or allocated from a data-dependent size
would fail to capture or would replay stale work. The c2rope CUDA registrations launch
on torch's current stream and never synchronise, so all of them must capture, and a
replay after new data is copied into the static inputs must give exactly what an eager
call gives on that data.

There is nothing to capture without a GPU, so these tests are defined only where CUDA
is available (like the CUDA cases of the other test files, which the `device` fixture
adds only on such machines): on a CPU-only machine this module collects no test at
all rather than skipping. On a GPU machine whose c2rope build lacks CUDA kernels
(C2ROPE_CUDA=1 not set) they fail, which is the honest outcome there.
"""
import pytest
import torch

import c2rope
from c2rope.reference.mask import chebyshev_mask_ref

CUDA_DEVICES = (
    [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.cuda.is_available() and torch.ops.c2rope.built_with_cuda()
    else []
)

_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _rotary_ref(x, cos, sin):
    """HF's rotate-half formula in float64 on [B, H, S, D] with cos/sin [Bc, S, R]."""
    rot = cos.shape[-1]
    half = rot // 2
    x64 = x.double()
    c, s = cos.double()[:, None], sin.double()[:, None]
    xr = x64[..., :rot]
    rotated = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
    return torch.cat((xr * c + rotated * s, x64[..., rot:]), dim=-1)


def _rotary_backward_ref(g, cos, sin):
    """The transpose of _rotary_ref (c2rope.h): g*cos + rotate_half^T(g*sin)."""
    rot = cos.shape[-1]
    half = rot // 2
    g64 = g.double()
    c, s = cos.double()[:, None], sin.double()[:, None]
    gr, gs = g64[..., :rot], g64[..., :rot] * s
    back = torch.cat((gs[..., half:], -gs[..., :half]), dim=-1)
    return torch.cat((gr * c + back, g64[..., rot:]), dim=-1)


def _qk(batch, seq, hq, hk, dim, dtype, device):
    """q/k as HF makes them: [B, S, H, D] projections viewed as [B, H, S, D]."""
    q = torch.randn(batch, seq, hq, dim, dtype=dtype, device=device).transpose(1, 2)
    k = torch.randn(batch, seq, hk, dim, dtype=dtype, device=device).transpose(1, 2)
    return q, k


def _capture(fn):
    """Warm up on a side stream (as torch.cuda.graphs recommends), then capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


if CUDA_DEVICES:

    @pytest.mark.parametrize("device", CUDA_DEVICES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("rot_dim", [64, 48])
    def test_rotary_forward_and_backward_replay(device, dtype, rot_dim):
        batch, seq, hq, hk, dim = 2, 37, 6, 2, 64
        q, k = _qk(batch, seq, hq, hk, dim, dtype, device)
        cos = torch.randn(1, seq, rot_dim, dtype=dtype, device=device)
        sin = torch.randn(1, seq, rot_dim, dtype=dtype, device=device)
        gq, gk = _qk(batch, seq, hq, hk, dim, dtype, device)

        def step():
            fq, fk = torch.ops.c2rope.rotary(q, k, cos, sin)
            bq, bk = torch.ops.c2rope.rotary_backward(gq, gk, cos, sin)
            return fq, fk, bq, bk

        graph, static_out = _capture(step)
        for _ in range(3):
            for t in (q, k, gq, gk, cos, sin):
                t.copy_(torch.randn_like(t))
            graph.replay()
            torch.cuda.synchronize(device)
            eager = step()
            for got, want in zip(static_out, eager):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            torch.testing.assert_close(static_out[0].double(), _rotary_ref(q, cos, sin), **_TOL[dtype])
            torch.testing.assert_close(static_out[1].double(), _rotary_ref(k, cos, sin), **_TOL[dtype])
            torch.testing.assert_close(static_out[2].double(), _rotary_backward_ref(gq, cos, sin), **_TOL[dtype])
            torch.testing.assert_close(static_out[3].double(), _rotary_backward_ref(gk, cos, sin), **_TOL[dtype])

    @pytest.mark.parametrize("device", CUDA_DEVICES)
    def test_rotary_inplace_replay(device):
        batch, seq, hq, hk, dim = 1, 19, 4, 4, 128
        q, k = _qk(batch, seq, hq, hk, dim, torch.bfloat16, device)
        cos = torch.randn(batch, seq, dim, dtype=torch.float32, device=device)
        sin = torch.randn(batch, seq, dim, dtype=torch.float32, device=device)
        graph, _ = _capture(lambda: torch.ops.c2rope.rotary_(q, k, cos, sin))
        for _ in range(2):
            q.copy_(torch.randn_like(q))
            k.copy_(torch.randn_like(k))
            q0, k0 = q.clone(), k.clone()
            want_q, want_k = torch.ops.c2rope.rotary(q0, k0, cos, sin)
            graph.replay()
            torch.cuda.synchronize(device)
            torch.testing.assert_close(q, want_q, rtol=0, atol=0)
            torch.testing.assert_close(k, want_k, rtol=0, atol=0)

    @pytest.mark.parametrize("device", CUDA_DEVICES)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_cos_sin_replay(device, dtype):
        batch, seq, half = 2, 33, 32
        positions = torch.randn(batch, seq, 3, device=device) * 100
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 2 * half, 2, device=device).float() / (2 * half)))
        axis = torch.randint(0, 3, (half,), dtype=torch.int32, device=device)
        graph, static_out = _capture(lambda: torch.ops.c2rope.cos_sin(positions, inv_freq, axis, 1.0, dtype))
        for _ in range(2):
            positions.copy_(torch.randn_like(positions) * 100)
            graph.replay()
            torch.cuda.synchronize(device)
            eager = torch.ops.c2rope.cos_sin(positions, inv_freq, axis, 1.0, dtype)
            for got, want in zip(static_out, eager):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            # HF's own float32 formula on the same GPU: equal bit for bit (docs/design.md §4).
            angle = positions.gather(2, axis.long().view(1, 1, -1).expand(batch, seq, -1)) * inv_freq
            emb = torch.cat((angle, angle), dim=-1)
            torch.testing.assert_close(static_out[0], emb.cos().to(dtype), rtol=0, atol=0)
            torch.testing.assert_close(static_out[1], emb.sin().to(dtype), rtol=0, atol=0)

    @pytest.mark.parametrize("device", CUDA_DEVICES)
    @pytest.mark.parametrize("dtype", [torch.bool, torch.bfloat16])
    def test_mask_replay(device, dtype):
        batch, kv_len, q_offset, q_len = 2, 160, 16, 144
        valid = torch.ones(batch, kv_len, dtype=torch.bool, device=device)
        image_id = torch.full((batch, kv_len), -1, dtype=torch.int32, device=device)
        ring = torch.zeros(batch, kv_len, dtype=torch.int32, device=device)
        graph, static_out = _capture(
            lambda: torch.ops.c2rope.chebyshev_mask(valid, image_id, ring, q_offset, q_len, 0, dtype))
        for _ in range(2):
            # A new layout each round: left padding and one 6x6 image at a random place.
            valid.fill_(True)
            image_id.fill_(-1)
            pad = int(torch.randint(0, 8, ()).item())
            valid[:, :pad] = False
            start = int(torch.randint(pad, kv_len - 36, ()).item())
            rows, cols = torch.meshgrid(torch.arange(6, device=device), torch.arange(6, device=device), indexing="ij")
            rank = torch.maximum((cols - 2.5).abs(), (2.5 - rows).abs()).floor().int().flatten()
            image_id[:, start:start + 36] = 0
            ring[:, start:start + 36] = rank
            graph.replay()
            torch.cuda.synchronize(device)
            eager = torch.ops.c2rope.chebyshev_mask(valid, image_id, ring, q_offset, q_len, 0, dtype)
            assert torch.equal(static_out, eager)
            assert torch.equal(static_out, chebyshev_mask_ref(valid, image_id, ring, q_offset, q_len, 0, dtype))

    @pytest.mark.parametrize("device", CUDA_DEVICES)
    def test_graphed_autograd_through_public_api(device):
        """make_graphed_callables captures forward and backward of apply_rotary_pos_emb."""
        batch, seq, hq, hk, dim = 2, 24, 4, 2, 64
        cos = torch.randn(batch, seq, dim, device=device)
        sin = torch.randn(batch, seq, dim, device=device)

        def rope(q, k):
            return c2rope.apply_rotary_pos_emb(q, k, cos, sin)

        q = torch.randn(batch, hq, seq, dim, device=device, requires_grad=True)
        k = torch.randn(batch, hk, seq, dim, device=device, requires_grad=True)
        graphed = torch.cuda.make_graphed_callables(rope, (q, k))
        for _ in range(2):
            q = torch.randn(batch, hq, seq, dim, device=device, requires_grad=True)
            k = torch.randn(batch, hk, seq, dim, device=device, requires_grad=True)
            gq, gk = torch.randn_like(q), torch.randn_like(k)
            out_q, out_k = graphed(q, k)
            torch.autograd.backward((out_q, out_k), (gq, gk))
            torch.testing.assert_close(out_q.double(), _rotary_ref(q.detach(), cos, sin), **_TOL[torch.float32])
            torch.testing.assert_close(q.grad.double(), _rotary_backward_ref(gq, cos, sin), **_TOL[torch.float32])
            torch.testing.assert_close(k.grad.double(), _rotary_backward_ref(gk, cos, sin), **_TOL[torch.float32])
