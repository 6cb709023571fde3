"""Train every position scheme on the synthetic spatial QA task with the same budget,
model and seeds; write accuracy curves (PNG), a markdown table and the raw results.

    PYTHONPATH=. python benchmarks/train_schemes.py                    # CPU budget (~12 min)
    PYTHONPATH=. python benchmarks/train_schemes.py --preset gpu       # bigger model, more steps
    PYTHONPATH=. python benchmarks/train_schemes.py --quick            # smoke run, seconds
    PYTHONPATH=. python benchmarks/train_schemes.py --from-results benchmarks/results/train_schemes/results.json
                                                                       # table + PNG again, no training
    PYTHONPATH=. python benchmarks/train_schemes.py --schemes rope1d c2rope --seeds 0 1 2 \\
        --extra --rope-theta 100                                       # anything finetune_spatial takes

Each (scheme, seed) run is examples/finetune_spatial.py's `main` in this process (one
process, no process group): identical init (the seed), identical batches and the same
held-out set for every scheme. Outputs go to --out (default benchmarks/results/train_schemes/):
results.json (every run, with its loss list and eval curve), table.md, accuracy.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path.insert(0, os.path.join(_ROOT, "examples"))
try:
    import c2rope  # noqa: F401
except ImportError:  # a source checkout without an install
    sys.path.insert(0, _ROOT)

import finetune_spatial as fs  # noqa: E402
from spatial_data import RELATIONS  # noqa: E402

PRESETS = {
    # The example's model and task (4x4 grid, 3 objects of 6 kinds, hidden 64, 3 layers,
    # batch 32): ~25 ms/step on a free CPU core, 6 schemes x 3 seeds x 1500 steps ~ 12 min.
    # At 800 steps most schemes are still mid-way through their jump in accuracy.
    "cpu": ["--steps", "1500", "--eval-every", "50", "--eval-size", "512"],
    # A larger image and model for a GPU: 8x8 grid, 4 objects of 8 kinds.
    "gpu": ["--grid", "8", "8", "--num-types", "8", "--objects", "4", "--hidden", "256", "--layers", "4",
            "--heads", "4", "--steps", "4000", "--batch-size", "128", "--eval-every", "100",
            "--eval-size", "2048", "--lr", "1e-3", "--warmup", "200"],
    "quick": ["--hidden", "32", "--layers", "2", "--heads", "2", "--steps", "6", "--batch-size", "8",
              "--eval-every", "3", "--eval-size", "32"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schemes", nargs="+", choices=fs.SCHEMES, default=list(fs.SCHEMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--preset", choices=("cpu", "gpu"), default=None,
                   help="model size and budget (default: gpu when CUDA is available, else cpu)")
    p.add_argument("--quick", action="store_true", help="a few steps of a tiny model (smoke run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=os.path.join(_HERE, "results", "train_schemes"))
    p.add_argument("--from-results", default=None, metavar="RESULTS_JSON",
                   help="no training: rebuild table.md and accuracy.png from a results.json")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further finetune_spatial.py options (last; they override the preset)")
    return p.parse_args(argv)


def run_all(args) -> list:
    import torch

    preset = "quick" if args.quick else args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    runs = []
    for scheme in args.schemes:
        for seed in args.seeds:
            argv = PRESETS[preset] + ["--device", args.device, "--log-every", "1000000", "--scheme", scheme,
                                      "--seed", str(seed), "--strategy", "none", *args.extra]
            began = time.time()
            result = fs.main(argv)
            result.update(seed=seed, preset=preset, argv=argv, wall_s=round(time.time() - began, 2))
            runs.append(result)
            with open(os.path.join(args.out, "results.json"), "w") as f:  # partial results survive an interrupt
                json.dump(runs, f, indent=1)
            print(f"[train_schemes] {scheme:14s} seed {seed}: accuracy {result['accuracy']:.3f}  "
                  f"loss {result['first_loss']:.3f} -> {result['last_loss_avg']:.3f}  ({result['wall_s']} s)",
                  file=sys.stderr, flush=True)
    return runs


def _mean_std(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values) -> str:
    mean, std = _mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if len(values) > 1 else f"{100 * mean:.1f}"


def table(runs: list) -> str:
    """Markdown: final held-out accuracy (%) per scheme, mean ± std over seeds, overall
    and per question kind, plus the area under the accuracy curve (learning speed)."""
    schemes = list(dict.fromkeys(r["scheme"] for r in runs))
    head = ["scheme", "accuracy", *RELATIONS, "mean acc. over curve", "final loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scheme in schemes:
        mine = [r for r in runs if r["scheme"] == scheme]
        cells = [scheme, _fmt([r["accuracy"] for r in mine])]
        cells += [_fmt([r["per_relation"][name] for r in mine]) for name in RELATIONS]
        cells.append(_fmt([statistics.fmean(a for _, a in r["curve"]) for r in mine]))
        loss, std = _mean_std([r["last_loss_avg"] for r in mine])
        cells.append(f"{loss:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    first = runs[0]
    lines.append("")
    lines.append(f"{len(runs) // len(schemes)} seed(s) per scheme, preset {first['preset']}, "
                 f"{first['steps']} steps, device {first['device']}; options: `{' '.join(first['argv'])}` "
                 "(scheme and seed vary). Chance on `quadrant` is 25 %.")
    return "\n".join(lines) + "\n"


def plot(runs: list, path: str) -> bool:
    """Left: held-out accuracy against step, mean over seeds (band: min..max). Right:
    final accuracy per question kind. False without matplotlib (the table and JSON are
    still written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[train_schemes] matplotlib is not installed: no PNG (pip install matplotlib)", file=sys.stderr)
        return False
    schemes = list(dict.fromkeys(r["scheme"] for r in runs))
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    for scheme in schemes:
        curves = [r["curve"] for r in runs if r["scheme"] == scheme]
        steps = [s for s, _ in curves[0]]
        per_step = list(zip(*[[a for _, a in c] for c in curves]))
        ax.plot(steps, [statistics.fmean(v) for v in per_step], label=scheme, marker="o", markersize=2)
        if len(curves) > 1:
            ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Spatial QA: accuracy by position scheme")
    ax.grid(alpha=0.3)
    ax.legend()
    width = 0.8 / len(schemes)
    for i, scheme in enumerate(schemes):
        mine = [r for r in runs if r["scheme"] == scheme]
        values = [_mean_std([r["per_relation"][name] for r in mine])[0] for name in RELATIONS]
        bars.bar([k + i * width for k in range(len(RELATIONS))], values, width, label=scheme)
    bars.set_xticks([k + 0.4 - width / 2 for k in range(len(RELATIONS))], RELATIONS)
    bars.set_ylim(0, 1)
    bars.set_title("final accuracy per question kind")
    bars.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.from_results:
        with open(args.from_results) as f:
            runs = json.load(f)
    else:
        runs = run_all(args)  # writes results.json as it goes
    text = table(runs)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    plotted = plot(runs, os.path.join(args.out, "accuracy.png"))
    print(text)
    written = ([] if args.from_results else ["results.json"]) + ["table.md"] + (["accuracy.png"] if plotted else [])
    print(f"[train_schemes] wrote {', '.join(written)} in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
