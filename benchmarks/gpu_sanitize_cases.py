"""Every path of the CUDA kernels on small inputs, compared with the CPU kernels.

Run by benchmarks/gpu_check.sh twice: plainly (each output's memory is first poisoned
through the caching allocator, so an element the kernel forgets to write shows up as a
mismatch) and under `compute-sanitizer --tool memcheck` with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 (every tensor its own allocation, so an out-of-bounds
access is reported instead of landing in a neighbour's memory). Small sizes keep the
sanitised run to a minute.

The CPU and CUDA rotary kernels both compute in float32 (double for float64) without
FMA contraction and round once, so they must agree bit for bit; the mask is exact; cos/
sin may differ by the last bit between the CPU and GPU math libraries.
--quick (used under the sanitizer, which slows every launch) keeps every layout and
shape but fewer dtype combinations. Exit status 1 on any mismatch.
"""
import sys

import torch

import c2rope  # noqa: F401  (registers torch.ops.c2rope)

DEV = torch.device("cuda")
QUICK = "--quick" in sys.argv[1:]
FAILURES = []
CASES = 0


def poison(nbytes):
    """Leave 0xFF bytes in the caching allocator's next block of this size."""
    if nbytes > 0:
        torch.full((nbytes,), 0xFF, dtype=torch.uint8, device=DEV)  # freed at once, cached


def check(name, got, want, exact=True):
    global CASES
    CASES += 1
    got = got.cpu()
    try:
        if exact:
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        else:
            torch.testing.assert_close(got, want, equal_nan=True)
    except AssertionError as exc:
        FAILURES.append(f"{name}: {str(exc).splitlines()[0:4]}")


def layouts(batch, heads, seq, dim, dtype):
    """(name, tensor [B, H, S, D] on the GPU) for the layouts the kernel distinguishes."""
    yield "bshd-view", torch.randn(batch, seq, heads, dim, dtype=dtype, device=DEV).transpose(1, 2)
    yield "contiguous", torch.randn(batch, heads, seq, dim, dtype=dtype, device=DEV)
    yield "last-stride-2", torch.randn(batch, heads, seq, 2 * dim, dtype=dtype, device=DEV)[..., ::2]
    flat = torch.randn(batch * heads * seq * dim + 1, dtype=dtype, device=DEV)
    yield "misaligned", flat[1:].view(batch, heads, seq, dim)
    yield "padded-rows", torch.randn(batch, heads, seq, dim + 3, dtype=dtype, device=DEV)[..., :dim]


def rotary_cases():
    dtypes = [torch.bfloat16, torch.float64] if QUICK else [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    for dtype in dtypes:
        for cs_dtype in [torch.float32] if QUICK else sorted({dtype, torch.float32}, key=str):
            for dim, rot in ((64, 64), (80, 64), (12, 6), (128, 96)):
                batch, seq, hq, hk = 2, 7, 5, 2
                for (lname, q), (_, k) in zip(layouts(batch, hq, seq, dim, dtype), layouts(batch, hk, seq, dim, dtype)):
                    for cs_batch in (1, batch):
                        angle = torch.randn(cs_batch, seq, rot, dtype=torch.float64) * 10
                        cos, sin = angle.cos().to(cs_dtype).to(DEV), angle.sin().to(cs_dtype).to(DEV)
                        name = f"rotary {dtype} cs {cs_dtype} D{dim} R{rot} {lname} Bc{cs_batch}"
                        want = torch.ops.c2rope.rotary(q.cpu(), k.cpu(), cos.cpu(), sin.cpu())
                        poison(q.numel() * q.element_size())
                        got = torch.ops.c2rope.rotary(q, k, cos, sin)
                        check(name + " fwd q", got[0], want[0])
                        check(name + " fwd k", got[1], want[1])
                        want_b = torch.ops.c2rope.rotary_backward(q.cpu(), k.cpu(), cos.cpu(), sin.cpu())
                        got_b = torch.ops.c2rope.rotary_backward(q, k, cos, sin)
                        check(name + " bwd q", got_b[0], want_b[0])
                        check(name + " bwd k", got_b[1], want_b[1])
                        qi, ki = q.clone(), k.clone()
                        torch.ops.c2rope.rotary_(qi, ki, cos, sin)
                        check(name + " in-place q", qi, want[0])
                        check(name + " in-place k", ki, want[1])
    # GQA extremes, decode step, only-k, empty problems.
    q = torch.randn(3, 1, 1, 128, dtype=torch.bfloat16, device=DEV)
    k = torch.randn(3, 0, 1, 128, dtype=torch.bfloat16, device=DEV)
    cos, sin = torch.randn(3, 1, 128, device=DEV), torch.randn(3, 1, 128, device=DEV)
    got = torch.ops.c2rope.rotary(q, k, cos, sin)
    want = torch.ops.c2rope.rotary(q.cpu(), k.cpu(), cos.cpu(), sin.cpu())
    check("rotary decode Hk=0 q", got[0], want[0])
    for shape in ((0, 4, 5, 64), (2, 4, 0, 64)):
        q = torch.randn(*shape, device=DEV)
        cos = torch.randn(1, shape[2], 64, device=DEV)
        got = torch.ops.c2rope.rotary(q, q, cos, cos)
        check(f"rotary empty {shape}", got[0], torch.empty(shape))


def cos_sin_cases():
    for dtype in (torch.float32, torch.float64) if QUICK else (torch.float32, torch.float16, torch.bfloat16,
                                                                 torch.float64):
        for batch, seq, axes, half in ((1, 1, 1, 1), (2, 37, 3, 64), (3, 130, 3, 17)):
            positions = torch.randn(batch, seq, axes) * 300
            positions_gpu = positions.to(DEV).transpose(1, 2).contiguous().transpose(1, 2)  # strided view
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 2 * half, 2).float() / (2 * half)))
            axis = torch.randint(0, axes, (half,), dtype=torch.int32)
            want = torch.ops.c2rope.cos_sin(positions, inv_freq, axis, 0.75, dtype)
            inv_gpu, axis_gpu = inv_freq.to(DEV), axis.to(DEV)
            poison(batch * seq * 2 * half * torch.empty((), dtype=dtype).element_size())
            got = torch.ops.c2rope.cos_sin(positions_gpu, inv_gpu, axis_gpu, 0.75, dtype)
            name = f"cos_sin {dtype} B{batch} S{seq} A{axes} h{half}"
            # CPU (SLEEF / libm) and CUDA math libraries may differ in the last bit.
            check(name + " cos", got[0], want[0], exact=False)
            check(name + " sin", got[1], want[1], exact=False)
    # An out-of-range axis entry on the GPU cannot be refused without a sync: NaN.
    axis = torch.tensor([0, 5], dtype=torch.int32, device=DEV)
    cos, _ = torch.ops.c2rope.cos_sin(torch.randn(1, 3, 2, device=DEV), torch.ones(2, device=DEV), axis, 1.0,
                                      torch.float32)
    global CASES
    CASES += 1
    if not (cos[..., 1].isnan().all() and cos[..., 3].isnan().all() and not cos[..., 0].isnan().any()):
        FAILURES.append("cos_sin: out-of-range axis did not give NaN in exactly its slots")


def random_layout(batch, kv_len):
    valid = torch.ones(batch, kv_len, dtype=torch.bool)
    image_id = torch.full((batch, kv_len), -1, dtype=torch.int32)
    ring = torch.randint(-3, 3, (batch, kv_len), dtype=torch.int32)  # text entries: any value
    for b in range(batch):
        pad = int(torch.randint(0, max(1, kv_len // 5), ()).item())
        if b % 2:
            valid[b, :pad] = False
        else:
            valid[b, kv_len - pad:] = False
        j, img = pad if b % 2 else 0, 0
        while True:
            j += int(torch.randint(0, 9, ()).item())
            h, w = (int(x) for x in torch.randint(1, 7, (2,)))
            if j + h * w > kv_len:
                break
            rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            r = torch.maximum((cols - (w - 1) / 2).abs(), ((h - 1) / 2 - rows).abs()).flatten()
            image_id[b, j:j + h * w] = img
            ring[b, j:j + h * w] = (r - r.min()).round().int()
            j, img = j + h * w, img + 1
    return valid, image_id, ring


def mask_cases():
    for dtype in (torch.bool, torch.float16) if QUICK else (torch.bool, torch.float32, torch.float16, torch.bfloat16):
        for kv_len, q_offset, q_len in ((96, 0, 96), (77, 0, 77), (300, 250, 50), (4128, 4000, 33), (1, 0, 1)):
            valid, image_id, ring = random_layout(3, kv_len)
            for mode in (0, 1, 2):
                want = torch.ops.c2rope.chebyshev_mask(valid, image_id, ring, q_offset, q_len, mode, dtype)
                gpu_inputs = (valid.to(DEV), image_id.to(DEV), ring.to(DEV))
                poison(want.numel() * want.element_size())
                got = torch.ops.c2rope.chebyshev_mask(*gpu_inputs, q_offset, q_len, mode, dtype)
                check(f"mask {dtype} K{kv_len} off{q_offset} Q{q_len} mode{mode}", got, want)


def main():
    if not torch.cuda.is_available() or not torch.ops.c2rope.built_with_cuda():
        print("needs a GPU and a c2rope build with C2ROPE_CUDA=1", file=sys.stderr)
        return 2
    torch.manual_seed(int(torch.randint(0, 2**31, ()).item()))
    rotary_cases()
    cos_sin_cases()
    mask_cases()
    torch.cuda.synchronize()
    print(f"{CASES} checks, {len(FAILURES)} failures")
    for f in FAILURES[:40]:
        print("FAIL", f)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
