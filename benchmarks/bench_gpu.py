"""GPU benchmark of the c2rope CUDA kernels against the memory-bandwidth limit.

Rotation (forward and backward) of HF-layout q/k ([B, S, H, D] projections viewed as
[B, H, S, D], bf16, Hq=32, Hk=8, D=128 by default) by
  - c2rope: torch.ops.c2rope.rotary / rotary_backward (the kernels alone) and the
    public c2rope.apply_rotary_pos_emb with autograd;
  - HF eager: transformers' llama apply_rotary_pos_emb;
  - torch.compile of that same HF function;
  - Liger-Kernel's liger_rotary_pos_emb, when liger_kernel is importable;
and the Chebyshev mask (bool and bf16, Q = K = 16k) against the plain-PyTorch
reference. The limits are measured in the same run: a large device-to-device copy
(read + write bandwidth) for the rotation, a large fill (write bandwidth) for the mask.
Bytes counted: rotation = read q, k + write q, k + read cos, sin; mask = the output.

Each timing is CUDA events around one call, L2 cleared (by reading a 256 MiB buffer)
before every repetition; the table gives the median and the 10th-90th percentile range.
Usage: python benchmarks/bench_gpu.py [--out DIR] [--seqs 4096,16384,32768] [--reps 30]
Writes bench_gpu.md and bench_gpu.json to --out (default: $OUT or out/).
"""
import argparse
import json
import os
import statistics
import sys

import torch

import c2rope


def _quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class Timer:
    def __init__(self, reps, warmup):
        self.reps, self.warmup = reps, warmup
        self.flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda")

    def __call__(self, fn):
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.reps):
            self.flush.sum()  # evicts q/k from L2 with clean lines (nothing to write back)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return {"median_ms": statistics.median(times), "p10_ms": _quantile(times, 0.1),
                "p90_ms": _quantile(times, 0.9)}


def copy_bandwidth(timer, nbytes=2**30):
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9


def write_bandwidth(timer, nbytes=2**30):
    dst = torch.empty(nbytes // 4, dtype=torch.int32, device="cuda")
    t = timer(lambda: dst.fill_(7))
    return nbytes / (t["median_ms"] * 1e-3) / 1e9


def rotary_impls():
    """name -> (forward(q, k, cos, sin), differentiable?) for what is importable."""
    impls = {"c2rope op": (lambda q, k, c, s: torch.ops.c2rope.rotary(q, k, c, s), False)}
    try:
        public = c2rope.apply_rotary_pos_emb  # lazy attribute: imports c2rope.rotary now
        impls["c2rope public"] = (lambda q, k, c, s: public(q, k, c, s), True)
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
        print(f"c2rope.apply_rotary_pos_emb unavailable: {exc}", file=sys.stderr)
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as hf_rope

        impls["HF eager"] = (hf_rope, True)
        impls["torch.compile(HF)"] = (torch.compile(hf_rope, fullgraph=True, dynamic=False), True)
    except Exception as exc:  # noqa: BLE001
        print(f"transformers unavailable: {exc}", file=sys.stderr)
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        impls["Liger-Kernel"] = (liger_rotary_pos_emb, True)
    except Exception as exc:  # noqa: BLE001
        print(f"liger_kernel unavailable ({exc}); its rows are left out", file=sys.stderr)
    return impls


def bench_rotary(timer, copy_gbs, args, rows):
    dtype = getattr(torch, args.dtype)
    impls = rotary_impls()
    for seq in args.seqs:
        b, hq, hk, d = args.batch, args.hq, args.hk, args.dim
        q = torch.randn(b, seq, hq, d, dtype=dtype, device="cuda").transpose(1, 2)
        k = torch.randn(b, seq, hk, d, dtype=dtype, device="cuda").transpose(1, 2)
        angle = torch.arange(seq, device="cuda").float()[:, None] * torch.rand(d // 2, device="cuda")
        angle = torch.cat((angle, angle), -1)[None]
        cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
        gq, gk = torch.randn_like(q), torch.randn_like(k)
        elt = q.element_size()
        nbytes = 2 * (q.numel() + k.numel()) * elt + 2 * cos.numel() * cos.element_size()
        # Sanity: c2rope agrees with HF before anything is timed.
        if "HF eager" in impls:
            want = impls["HF eager"][0](q, k, cos, sin)
            got = torch.ops.c2rope.rotary(q, k, cos, sin)
            for g, w in zip(got, want):
                torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)
        base = {}
        for name, (fn, differentiable) in impls.items():
            # Liger rotates its inputs in place: give it copies so the others see fresh data.
            qi, ki = (q.clone(), k.clone()) if name == "Liger-Kernel" else (q, k)
            for direction in ("fwd", "bwd"):
                try:
                    if direction == "fwd":
                        t = timer(lambda: fn(qi, ki, cos, sin))
                    elif name == "c2rope op":
                        t = timer(lambda: torch.ops.c2rope.rotary_backward(gq, gk, cos, sin))
                    elif differentiable:
                        qg = qi.detach().clone().requires_grad_()
                        kg = ki.detach().clone().requires_grad_()
                        out = fn(qg, kg, cos, sin)
                        t = timer(lambda: torch.autograd.grad(out, (qg, kg), (gq, gk), retain_graph=True))
                    else:
                        continue
                except Exception as exc:  # noqa: BLE001
                    rows.append({"op": f"rotary {direction}", "S": seq, "impl": name, "error": repr(exc)[:120]})
                    continue
                gbs = nbytes / (t["median_ms"] * 1e-3) / 1e9
                if name == "HF eager":
                    base[direction] = t["median_ms"]
                rows.append({"op": f"rotary {direction}", "S": seq, "impl": name, **t, "GB/s": gbs,
                             "% of limit": 100 * gbs / copy_gbs})
        for r in rows:
            if r.get("S") == seq and r["op"].startswith("rotary") and "median_ms" in r:
                ref = base.get(r["op"].split()[-1])
                r["speedup"] = ref / r["median_ms"] if ref else None
        torch.cuda.empty_cache()


def image_layout(seq, n_images=8, grid=24, device="cuda"):
    """One batch row of length seq: text with n_images grid x grid images spread evenly."""
    valid = torch.ones(1, seq, dtype=torch.bool, device=device)
    image_id = torch.full((1, seq), -1, dtype=torch.int32, device=device)
    ring = torch.zeros(1, seq, dtype=torch.int32, device=device)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    c = (grid - 1) / 2
    rank = (torch.maximum((cols - c).abs(), (c - rows).abs()) - (0.5 if grid % 2 == 0 else 0)).round().int()
    gap = seq // n_images
    for i in range(n_images):
        start = i * gap + (gap - grid * grid) // 2
        if start < 0 or start + grid * grid > seq:
            break
        image_id[0, start:start + grid * grid] = i
        ring[0, start:start + grid * grid] = rank.flatten().to(device)
    return valid, image_id, ring


def bench_mask(timer, write_gbs, args, rows):
    from c2rope.reference.mask import chebyshev_mask_ref

    seq = args.mask_seq
    valid, image_id, ring = image_layout(seq)
    small = image_layout(2048)
    for dtype in (torch.bool, torch.bfloat16):
        got = torch.ops.c2rope.chebyshev_mask(*small, 0, 2048, 0, dtype)
        assert torch.equal(got, chebyshev_mask_ref(*small, 0, 2048, 0, dtype)), "mask differs from the reference"
        nbytes = seq * seq * torch.empty((), dtype=dtype).element_size()
        impls = {"c2rope op": lambda: torch.ops.c2rope.chebyshev_mask(valid, image_id, ring, 0, seq, 0, dtype),
                 "torch reference": lambda: chebyshev_mask_ref(valid, image_id, ring, 0, seq, 0, dtype)}
        for name, fn in impls.items():
            try:
                t = timer(fn)
            except Exception as exc:  # noqa: BLE001 (e.g. the reference running out of memory)
                rows.append({"op": f"mask {str(dtype).split('.')[-1]}", "S": seq, "impl": name, "error": repr(exc)[:120]})
                torch.cuda.empty_cache()
                continue
            gbs = nbytes / (t["median_ms"] * 1e-3) / 1e9
            rows.append({"op": f"mask {str(dtype).split('.')[-1]}", "S": seq, "impl": name, **t, "GB/s": gbs,
                         "% of limit": 100 * gbs / write_gbs})
            torch.cuda.empty_cache()
        mask_rows = [r for r in rows if r["op"] == f"mask {str(dtype).split('.')[-1]}" and "median_ms" in r]
        ref = next((r["median_ms"] for r in mask_rows if r["impl"] == "torch reference"), None)
        for r in mask_rows:
            r["speedup"] = ref / r["median_ms"] if ref else None


def markdown(rows, header):
    lines = [header, "", "| op | S | impl | median ms | p10-p90 ms | GB/s | % of limit | speedup vs baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['S']} | {r['impl']} | failed: {r['error']} | | | | |")
            continue
        sp = r.get("speedup")
        lines.append(f"| {r['op']} | {r['S']} | {r['impl']} | {r['median_ms']:.3f} | "
                     f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f} | {r['GB/s']:.0f} | {r['% of limit']:.1f} | "
                     f"{'' if sp is None else f'{sp:.2f}x'} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--seqs", default="4096,16384,32768")
    ap.add_argument("--mask-seq", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hk", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--skip-mask", action="store_true")
    args = ap.parse_args()
    args.seqs = [int(s) for s in args.seqs.split(",") if s]
    if not torch.cuda.is_available() or not torch.ops.c2rope.built_with_cuda():
        sys.exit("bench_gpu.py needs a GPU and a c2rope build with C2ROPE_CUDA=1")
    timer = Timer(args.reps, args.warmup)
    copy_gbs = copy_bandwidth(timer)
    write_gbs = write_bandwidth(timer)
    rows = []
    bench_rotary(timer, copy_gbs, args, rows)
    if not args.skip_mask:
        bench_mask(timer, write_gbs, args, rows)
    header = (f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; "
              f"copy (read+write) {copy_gbs:.0f} GB/s, write {write_gbs:.0f} GB/s; "
              f"rotation: B={args.batch} Hq={args.hq} Hk={args.hk} D={args.dim} {args.dtype}, limit = copy; "
              f"mask: Q=K={args.mask_seq}, 8 images 24x24, limit = write; {args.reps} reps")
    header += "; baseline = HF eager (rotation), torch reference (mask)"
    text = markdown(rows, header)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
        json.dump({"copy_GBps": copy_gbs, "write_GBps": write_gbs, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
