"""Fused rotary (c2rope.apply_rotary_pos_emb) vs HF's eager formula and torch.compile of it.

Shapes follow a Llama-style attention layer: q/k come from [B, S, H*D] projections viewed
as [B, H, S, D] (HF's layout, not contiguous), cos/sin are [B, S, D] in the activation
dtype. Forward, and forward + backward (gradients of q and k). The memory-bandwidth
limit is measured in the same run with a clone() of a tensor of the same size as q + k:
bandwidth = bytes read + written / time, and "x limit" is each time divided by the time
the rotation's own bytes (read q, k, cos, sin; write q, k; twice that with backward)
would take at that bandwidth.

    PYTHONPATH=. python benchmarks/bench_rotary.py                       # B=1 S=4096 Hq=32 Hk=8 D=128
    PYTHONPATH=. python benchmarks/bench_rotary.py --seq 256 --repeats 5 # smoke run
"""
import argparse

import torch

import c2rope
from timing import measure, summary  # noqa: E402  (benchmarks/timing.py, beside this file)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def hf_apply(q, k, cos, sin):
    """transformers' apply_rotary_pos_emb (unsqueeze_dim=1), verbatim math."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def make_inputs(args, dtype, device, requires_grad):
    b, s, hq, hk, d = args.batch, args.seq, args.hq, args.hk, args.dim
    q = torch.randn(b, s, hq * d, device=device, dtype=dtype).view(b, s, hq, d).transpose(1, 2)
    k = torch.randn(b, s, hk * d, device=device, dtype=dtype).view(b, s, hk, d).transpose(1, 2)
    if requires_grad:
        q.requires_grad_()
        k.requires_grad_()
    rope = c2rope.C2RotaryEmbedding(dim=d, device=device)
    x = torch.empty(1, device=device, dtype=dtype)
    cos, sin = rope(x, torch.arange(s, device=device).expand(b, s))
    return q, k, cos, sin


def run_case(args, dtype, device, backward):
    q, k, cos, sin = make_inputs(args, dtype, device, backward)
    impls = {
        "HF eager": hf_apply,
        "HF torch.compile": torch.compile(hf_apply, dynamic=False),
        "c2rope fused": c2rope.apply_rotary_pos_emb,
    }
    if backward:
        gq = torch.randn_like(q)
        gk = torch.randn_like(k)

        def step(impl):
            out_q, out_k = impl(q, k, cos, sin)
            torch.autograd.backward((out_q, out_k), (gq, gk))
            q.grad = k.grad = None
    else:

        def step(impl):
            with torch.no_grad():
                impl(q, k, cos, sin)

    results = {name: summary(measure(lambda f=f: step(f), device, args.repeats, warmup=3)) for name, f in impls.items()}
    if not backward:  # inference: rotate in place, no output allocation
        from c2rope.rotary import apply_rotary_pos_emb_

        qd, kd = q.detach().clone(), k.detach().clone()
        results["c2rope fused in place"] = summary(
            measure(lambda: apply_rotary_pos_emb_(qd, kd, cos, sin), device, args.repeats, warmup=3)
        )

    # Bandwidth probe: clone a tensor the size of q + k (read once, written once).
    elem = q.element_size()
    qk_bytes = (q.numel() + k.numel()) * elem
    probe = torch.empty(qk_bytes // elem, device=device, dtype=dtype).normal_()
    clone_med, _, _ = summary(measure(lambda: probe.clone(), device, args.repeats, warmup=3))
    bandwidth = 2 * qk_bytes / clone_med
    # For reference: a copy into existing memory (no page faults on fresh allocations).
    target = torch.empty_like(probe)
    copy_med, _, _ = summary(measure(lambda: target.copy_(probe), device, args.repeats, warmup=3))
    copy_bandwidth = 2 * qk_bytes / copy_med
    table_bytes = 2 * cos.numel() * cos.element_size()
    rot_bytes = 2 * qk_bytes + table_bytes  # read q, k, cos, sin; write q, k
    if backward:
        rot_bytes *= 2
    limit = rot_bytes / bandwidth
    return results, bandwidth, copy_bandwidth, limit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hq", type=int, default=32)
    parser.add_argument("--hk", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = torch.ops.c2rope.openmp_max_threads()
    print(
        f"device={device} torch={torch.__version__} torch threads={torch.get_num_threads()} "
        f"c2rope OpenMP threads={threads}; B={args.batch} S={args.seq} Hq={args.hq} "
        f"Hk={args.hk} D={args.dim}; median of {args.repeats} [IQR]\n"
    )
    print("| dtype | pass | implementation | time (ms) | vs HF eager | x bandwidth limit |")
    print("|---|---|---|---|---|---|")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        for backward in (False, True):
            results, bandwidth, copy_bandwidth, limit = run_case(args, dtype, device, backward)
            eager = results["HF eager"][0]
            label = "fwd+bwd" if backward else "fwd"
            for impl, (med, lo, hi) in results.items():
                print(
                    f"| {name} | {label} | {impl} | {med * 1e3:.3f} [{lo * 1e3:.3f}, {hi * 1e3:.3f}] "
                    f"| {eager / med:.2f}x | {med / limit:.2f} |"
                )
            print(
                f"| {name} | {label} | bandwidth limit ({bandwidth / 1e9:.1f} GB/s clone) | "
                f"{limit * 1e3:.3f} | {eager / limit:.2f}x | 1.00 |"
            )
            print(
                f"| {name} | {label} | (copy_ into existing memory: {copy_bandwidth / 1e9:.1f} GB/s) "
                f"| {limit * bandwidth / copy_bandwidth * 1e3:.3f} | | |"
            )


if __name__ == "__main__":
    main()
