"""Chebyshev mask: the C kernel (c2rope.chebyshev_mask) vs a vectorised plain-PyTorch
mask (c2rope.reference.chebyshev_mask_ref: broadcast compares and where over [B, Q, K]).

The prompt repeats [64 text tokens, one 24x24 image (576 tokens)] up to S, so S=4096
holds six images. The mask kernel is a pure write of B*S*S elements (its inputs are
O(S)), so its physical limit is a same-size write: `torch.empty(...).fill_()` measured
in the same run ("fill"); "x fill" is the kernel's time over the fill's.

    PYTHONPATH=. python benchmarks/bench_mask.py                                # S = 1k ... 16k
    PYTHONPATH=. python benchmarks/bench_mask.py --sizes 1024,2048 --repeats 3  # smoke run
"""
import argparse
import os
import sys

import torch

try:
    import c2rope
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import c2rope
from c2rope.reference import chebyshev_mask_ref
from timing import measure, summary  # noqa: E402  (benchmarks/timing.py, beside this file)

TEXT, GRID = 64, (24, 24)


def summary_ms(times):
    return tuple(t * 1e3 for t in summary(times))


def make_layout(seq: int, batch: int) -> c2rope.VisualLayout:
    spans, pos = [], TEXT
    while pos + GRID[0] * GRID[1] <= seq:
        spans.append((pos, *GRID))
        pos += GRID[0] * GRID[1] + TEXT
    return c2rope.VisualLayout.from_spans([list(spans) for _ in range(batch)], seq)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384")
    parser.add_argument("--dtypes", default="bool,bfloat16", help="comma list: bool,float32,float16,bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--mode", default="outward", choices=("outward", "inward", "causal"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--torch-max", type=int, default=16384,
                        help="skip the PyTorch version above this S (it needs several S*S temporaries)")
    args = parser.parse_args(argv)

    config = c2rope.C2RoPEConfig(mask=args.mode)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OpenMP max {torch.ops.c2rope.openmp_max_threads()}), batch {args.batch}, mask={args.mode}, "
          f"median of {args.repeats} [p25 - p75]\n")
    print("| S | images | dtype | C kernel ms | PyTorch ms | speedup | kernel GB/s | fill ms | fill GB/s | x fill |")
    print("|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|")
    for seq in (int(s) for s in args.sizes.split(",")):
        layout = make_layout(seq, args.batch)
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            nbytes = args.batch * seq * seq * torch.empty(0, dtype=dtype).element_size()
            ours = summary_ms(measure(lambda: c2rope.chebyshev_mask(layout, config, dtype), repeats=args.repeats))
            fill = summary_ms(measure(
                lambda: torch.empty(args.batch, 1, seq, seq, dtype=dtype).fill_(1), repeats=args.repeats))
            if seq <= args.torch_max:
                def plain():
                    return chebyshev_mask_ref(layout.valid, layout.image_id, layout.ring, 0, seq, args.mode, dtype)
                assert torch.equal(plain(), c2rope.chebyshev_mask(layout, config, dtype))
                ref = summary_ms(measure(plain, repeats=max(3, args.repeats // 2), warmup=1))
                ref_cell, speedup = f"{ref[0]:.2f} ({ref[1]:.2f} - {ref[2]:.2f})", f"{ref[0] / ours[0]:.1f}x"
            else:
                ref_cell, speedup = "skipped", "-"
            print(
                f"| {seq} | {len(layout.spans[0])} | {name} | {ours[0]:.2f} ({ours[1]:.2f} - {ours[2]:.2f}) | "
                f"{ref_cell} | {speedup} | {nbytes / ours[0] / 1e6:.1f} | "
                f"{fill[0]:.2f} ({fill[1]:.2f} - {fill[2]:.2f}) | {nbytes / fill[0] / 1e6:.1f} | "
                f"{ours[0] / fill[0]:.2f} |"
            )


if __name__ == "__main__":
    main()
