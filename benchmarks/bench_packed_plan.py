"""Planning a packed (padding-free) row: what a patched model computes before its
decoder runs (sample ids, every sample's triplet positions as if alone, the layout),
for a long row of many samples with images, against the plan of the same tokens as one
unpacked sequence, measured in the same run (the baseline: packing should cost about
nothing on top).

The row: one long sample (a third of the tokens) and `--samples` short ones of random
lengths, every other sample holding a 6x6 image; boundaries as DataCollatorWithFlattening
gives them (position_ids restarting at 0). Time: median [p25 - p75] of `--repeats`
calls. Memory: the peak resident-set growth of one call, each case measured in a fresh
process (torch's CPU tensors are not seen by tracemalloc, so ru_maxrss is read).

Only the plan is measured: eager / sdpa then need the dense [S, S] mask by nature;
flex_attention's BlockMask is classified a 32 MiB slab at a time (never S x S).

    PYTHONPATH=. python benchmarks/bench_packed_plan.py                           # 64k tokens, 2000 samples
    PYTHONPATH=. python benchmarks/bench_packed_plan.py --tokens 21600 --samples 600 --repeats 3
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys

import torch

try:
    import c2rope
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import c2rope
from timing import measure, summary  # noqa: E402  (benchmarks/timing.py, beside this file)

IMAGE = (6, 6)


def make_row(tokens: int, samples: int, seed: int = 0):
    """(spans of the whole row, sample lengths): one long sample, then short ones."""
    rng = random.Random(seed)
    long = tokens // 3
    rest = tokens - long
    cuts = sorted(rng.sample(range(1, rest), samples - 1))
    lengths = [long] + [b - a for a, b in zip([0] + cuts, cuts + [rest])]
    spans, at = [], 0
    for index, length in enumerate(lengths):
        if index % 2 == 0 and length >= IMAGE[0] * IMAGE[1] + 2:
            spans.append((at + 1, *IMAGE))
        at += length
    return spans, lengths


def plan_once(state, layout, position_ids, tokens):
    from c2rope.hf.context import CallFrame

    frame = CallFrame(state, visual_layout=layout)
    return state.plan(frame=frame, input_ids=None, embeds=None, attention_mask=None, cache=None, batch=1,
                      q_len=tokens, device=torch.device("cpu"), position_ids=position_ids)


def run_case(case: str, tokens: int, samples: int, repeats: int) -> dict:
    from c2rope.hf.state import C2RoPEState

    spans, lengths = make_row(tokens, samples)
    layout = c2rope.VisualLayout.from_spans([spans], tokens)
    state = C2RoPEState(c2rope.C2RoPEConfig(), None, None, "llama")
    position_ids = None
    if case == "packed":
        position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    # Warm-up on a tiny packed row: imports and first-use allocations are not the plan's.
    small_spans, small_lengths = make_row(400, 4)
    plan_once(state, c2rope.VisualLayout.from_spans([small_spans], 400),
              torch.cat([torch.arange(n) for n in small_lengths]).unsqueeze(0), 400)
    base = _rss_bytes()
    plan = plan_once(state, layout, position_ids, tokens)  # first call: the memory peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    assert (plan.samples is not None) == (case == "packed")
    times = measure(lambda: plan_once(state, layout, position_ids, tokens), repeats=repeats, warmup=1)
    return {"times": times, "peak": max(peak, 0), "images": len(spans)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", choices=("packed", "unpacked"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.tokens, args.samples, args.repeats)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, c2rope from "
          f"{os.path.dirname(c2rope.__file__)}; {args.tokens} tokens, {args.samples} samples, "
          f"median of {args.repeats} [p25 - p75]\n")
    print("| row | S | samples | images | plan ms | peak RSS growth MB |")
    print("|:---|---:|---:|---:|---:|---:|")
    for case in ("unpacked", "packed"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", case, "--tokens", str(args.tokens),
                              "--samples", str(args.samples), "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True, env=dict(os.environ))
        result = json.loads(out.stdout.strip().splitlines()[-1])
        median, low, high = (t * 1e3 for t in summary(result["times"]))
        count = args.samples if case == "packed" else 1
        print(f"| {case} | {args.tokens} | {count} | {result['images']} | {median:.1f} [{low:.1f} - {high:.1f}] | "
              f"{result['peak'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
