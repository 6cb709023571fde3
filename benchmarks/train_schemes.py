"""Train every position scheme on the synthetic spatial QA task with the same budget,
model and seeds; write accuracy curves (PNG), a markdown table and the raw results.

    PYTHONPATH=. python benchmarks/train_schemes.py                    # CPU budget (~12 min)
    PYTHONPATH=. python benchmarks/train_schemes.py --preset gpu       # bigger model, more steps
    PYTHONPATH=. python benchmarks/train_schemes.py --quick            # smoke run, seconds
    PYTHONPATH=. python benchmarks/train_schemes.py --from-results benchmarks/results/train_schemes/results.json
                                                                       # table + PNG again, no training
    PYTHONPATH=. python benchmarks/train_schemes.py --schemes rope1d c2rope --seeds 0 1 2 \\
        --extra --rope-theta 100                                       # anything finetune_spatial takes

Each (scheme, seed) run is examples/finetune_spatial.py's `main` (one process, no
process group; --jobs N runs N of them at a time, one thread each): identical init (the
seed), identical batches and the same held-out set for every scheme. Outputs go to --out
(default benchmarks/results/train_schemes/): results.json (every run, with its loss list
and eval curve; --resume skips the runs it already holds), table.md, accuracy.png.

The table gives mean ± 95 % confidence half-width over seeds (Student t) and, for every
scheme, the paired difference to --baseline (default rope1d) on the same seeds: mean
with its 95 % CI, wins/losses and the exact sign-flip permutation p-value
(benchmarks/seed_stats.py). Schemes are any of finetune_spatial.SCHEMES or c2rope-<name>
(C2RoPEConfig.from_name names).
"""
from __future__ import annotations

import argparse
import json
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
from seed_stats import mean_ci, paired, tail_slope  # noqa: E402
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
    # docs/continuity.md: 6x6 grid (2 objects of 3 kinds), hidden 32, 2 layers, 700 steps;
    # sized for 8 seeds x several schemes, 2 single-threaded runs at a time, on 2 shared cores.
    "continuity": ["--grid", "6", "6", "--num-types", "3", "--objects", "2", "--hidden", "32", "--layers", "2",
                   "--heads", "2", "--steps", "700", "--batch-size", "32", "--lr", "5e-3",
                   "--eval-every", "100", "--eval-size", "512"],
    # docs/continuity.md, second study: head dim 64 (hidden 64, 1 head), 6x6 grid, 500 steps
    # at lr 2e-3: ~85 s a run on one shared core (load 5-9), so 5 schemes x 8 seeds ~ 1 h
    # (lr 4e-3 and 5e-3 left rope1d on the 55 % plateau). Not converged: docs/continuity.md.
    "continuity64": ["--grid", "6", "6", "--num-types", "3", "--objects", "2", "--hidden", "64", "--layers", "2",
                     "--heads", "1", "--steps", "500", "--batch-size", "32", "--lr", "2e-3",
                     "--eval-every", "100", "--eval-size", "512"],
    "quick": ["--hidden", "32", "--layers", "2", "--heads", "2", "--steps", "6", "--batch-size", "8",
              "--eval-every", "3", "--eval-size", "32"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schemes", nargs="+", type=fs.scheme_arg, default=list(fs.SCHEMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--baseline", default="rope1d", help="scheme the paired comparison is against")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each single-threaded (default 1)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out/results.json")
    p.add_argument("--preset", choices=("cpu", "gpu", "continuity", "continuity64"), default=None,
                   help="model size and budget (default: gpu when CUDA is available, else cpu)")
    p.add_argument("--quick", action="store_true", help="a few steps of a tiny model (smoke run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=os.path.join(_HERE, "results", "train_schemes"))
    p.add_argument("--from-results", default=None, metavar="RESULTS_JSON",
                   help="no training: rebuild table.md and accuracy.png from a results.json")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further finetune_spatial.py options (last; they override the preset)")
    return p.parse_args(argv)


def _one_run(argv: list, seed: int, preset: str, threads: int) -> dict:
    """One finetune_spatial run (in a worker process when --jobs > 1)."""
    import contextlib
    import io

    import torch

    if threads:
        torch.set_num_threads(threads)
    began = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's JSON lines; the result is returned
        result = fs.main(argv)
    result.update(seed=seed, preset=preset, argv=argv, wall_s=round(time.time() - began, 2))
    return result


def run_all(args) -> list:
    import concurrent.futures
    import multiprocessing

    import torch

    preset = "quick" if args.quick else args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    path = os.path.join(args.out, "results.json")
    runs = []
    if args.resume and os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)
    done = {(r["scheme"], r["seed"]) for r in runs}
    todo = []
    # Seed-major: an interrupted study still holds every scheme on the same seeds (paired).
    for seed in args.seeds:
        for scheme in args.schemes:
            if (scheme, seed) in done:
                continue
            argv = PRESETS[preset] + ["--device", args.device, "--log-every", "1000000", "--scheme", scheme,
                                      "--seed", str(seed), "--strategy", "none", *args.extra]
            todo.append((argv, seed, preset))

    def record(result):
        runs.append(result)
        with open(path, "w") as f:  # partial results survive an interrupt (--resume continues)
            json.dump(runs, f, indent=1)
        print(f"[train_schemes] {result['scheme']:14s} seed {result['seed']}: accuracy {result['accuracy']:.3f}  "
              f"loss {result['first_loss']:.3f} -> {result['last_loss_avg']:.3f}  ({result['wall_s']} s)",
              file=sys.stderr, flush=True)

    if args.jobs <= 1:
        for job in todo:
            record(_one_run(*job, threads=0))
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(_one_run, *job, threads=1) for job in todo]
            for future in concurrent.futures.as_completed(futures):
                record(future.result())
    schemes = list(dict.fromkeys(list(args.schemes) + [r["scheme"] for r in runs]))
    runs.sort(key=lambda r: (schemes.index(r["scheme"]), r["seed"]))
    with open(path, "w") as f:  # complete: scheme by scheme, seeds in order
        json.dump(runs, f, indent=1)
    return runs


def _fmt(values) -> str:
    stats = mean_ci(values)
    if stats["n"] < 2:
        return f"{100 * stats['mean']:.1f}"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['half']:.1f}"


def _fmt_plain(values, spec: str) -> str:
    """mean ± 95 % CI half-width of unscaled values (the loss slope)."""
    stats = mean_ci(values)
    if stats["n"] < 2:
        return format(stats["mean"], spec)
    return f"{format(stats['mean'], spec)} ± {stats['half']:.3f}"


def _by_seed(runs: list, scheme: str, key) -> dict:
    return {r["seed"]: key(r) for r in runs if r["scheme"] == scheme}


def _paired_cell(runs: list, scheme: str, baseline: str) -> str:
    """Accuracy difference to the baseline on the seeds both have: mean [95 % CI],
    wins-losses, permutation p."""
    mine = _by_seed(runs, scheme, lambda r: r["accuracy"])
    base = _by_seed(runs, baseline, lambda r: r["accuracy"])
    seeds = sorted(set(mine) & set(base))
    if scheme == baseline or len(seeds) < 2:
        return "—"
    d = paired([mine[s] for s in seeds], [base[s] for s in seeds])
    lo, hi = 100 * (d["mean"] - d["half"]), 100 * (d["mean"] + d["half"])
    return f"{100 * d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}], {d['wins']}-{d['losses']}, p={d['p']:.3f}"


def table(runs: list, baseline: str = "rope1d") -> str:
    """Markdown: final held-out accuracy (%) per scheme, mean ± 95 % CI half-width over
    seeds, overall and per question kind, the paired difference to the baseline, the
    mean accuracy over the curve (learning speed) and the final loss."""
    schemes = list(dict.fromkeys(r["scheme"] for r in runs))
    head = ["scheme", "accuracy", f"Δ vs {baseline} (paired)", *RELATIONS, "mean acc. over curve", "final loss",
            "loss slope /100 steps, last 25 %", "acc. gain, last eval interval"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scheme in schemes:
        mine = [r for r in runs if r["scheme"] == scheme]
        cells = [scheme, _fmt([r["accuracy"] for r in mine]), _paired_cell(runs, scheme, baseline)]
        cells += [_fmt([r["per_relation"][name] for r in mine]) for name in RELATIONS]
        cells.append(_fmt([statistics.fmean(a for _, a in r["curve"]) for r in mine]))
        cells.append(f"{mean_ci([r['last_loss_avg'] for r in mine])['mean']:.3f}")
        cells.append(_fmt_plain([100 * tail_slope(r["losses"]) for r in mine], "+.3f"))
        cells.append(_fmt([r["curve"][-1][1] - r["curve"][-2][1] for r in mine if len(r["curve"]) > 1]))
        lines.append("| " + " | ".join(cells) + " |")
    first = runs[0]
    seeds = sorted({r["seed"] for r in runs})
    lines.append("")
    lines.append(f"Seeds {seeds} per scheme, preset {first['preset']}, {first['steps']} steps, device "
                 f"{first['device']}; options: `{' '.join(first['argv'])}` (scheme and seed vary). "
                 "Accuracy in %, mean ± 95 % CI half-width (Student t). Δ: accuracy minus the "
                 f"baseline's on the same seed, mean [95 % CI], wins-losses, exact sign-flip p. "
                 "Chance on `quadrant` is 25 %. Convergence: the loss slope is the least-squares "
                 "slope of the per-step training loss over the last 25 % of steps (per 100 steps; "
                 "0 on a plateau), the last column the accuracy change between the last two evals.")
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
        values = [mean_ci([r["per_relation"][name] for r in mine])["mean"] for name in RELATIONS]
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
    text = table(runs, args.baseline)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    plotted = plot(runs, os.path.join(args.out, "accuracy.png"))
    print(text)
    written = ([] if args.from_results else ["results.json"]) + ["table.md"] + (["accuracy.png"] if plotted else [])
    print(f"[train_schemes] wrote {', '.join(written)} in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
