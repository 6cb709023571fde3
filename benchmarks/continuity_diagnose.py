"""Every temporal index x spatial band of C2RoPE, under the Chebyshev (outward) and the
causal mask, through `python -m c2rope diagnose`'s measurements; JSON + markdown table.

    python benchmarks/continuity_diagnose.py                        # dim 128, 24x24 (the default)
    python benchmarks/continuity_diagnose.py --dim 16 --grid 6x6    # the training study's sizes
    python benchmarks/continuity_diagnose.py --from-results benchmarks/results/continuity/diagnose_dim128_24x24.json

Writes diagnose_dim<D>_<H>x<W>.json (every number) and .md (the table of
docs/continuity.md) to --out; the heat maps go to a temporary folder (see
`python -m c2rope diagnose --schemes ...` to keep them).
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import c2rope  # noqa: F401
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.dirname(_HERE))

from c2rope.config import SPATIAL_BANDS, TEMPORAL  # noqa: E402
from c2rope.cli.diagnose import DiagnoseSettings, run_diagnose  # noqa: E402
from c2rope.cli.diagnostics.schemes import scheme_by_key  # noqa: E402

# The validation test of the issue: vertical/horizontal neighbour attention within
# [0.8, 1.25], and under the outward mask no mass on rings farther out.
RATIO_RANGE = (0.8, 1.25)


def scheme_keys():
    keys = ["rope1d"]
    for temporal, band, mask in itertools.product(TEMPORAL, SPATIAL_BANDS, ("outward", "causal")):
        keys.append(f"c2rope-{temporal}-{band}-{mask}")
    return keys + ["c2rope-paper", "mrope"]


def summarise(results, settings) -> dict:
    rows = {}
    for key, res in results.items():
        c, r = res["continuity"], res["rings"]
        rows[key] = {
            "ratio": c["ratio"], "locality": c["locality"], "vertical": c["vertical"],
            "horizontal": c["horizontal"],
            "nearer": r["nearer"], "same": r["same"], "farther": r["farther"], "outside": r["outside"],
            "decay_relative": {str(d["text"]): d["relative"] for d in res["decay"]},
            "ptd_paper": res["ptd_paper"], "ptd_grid": res["ptd_grid"],
        }
    return {"settings": {"dim": settings.dim, "grid": list(settings.grid), "draws": settings.draws,
                         "seed": settings.seed, "text_lengths": list(settings.text_lengths)},
            "schemes": rows}


def passes(key: str, row: dict) -> str:
    """The validation test for Chebyshev-masked C2RoPE; the v/h half alone otherwise."""
    lo, hi = RATIO_RANGE
    ratio_ok = lo <= row["ratio"] <= hi
    if key.startswith("c2rope") and key.endswith("-outward"):
        return "**yes**" if ratio_ok and row["farther"] == 0 else "no"
    return f"(v/h {'in' if ratio_ok else 'out of'} range)"


def table(summary: dict) -> str:
    s = summary["settings"]
    last = str(s["text_lengths"][-1])
    lines = [
        f"Rotary dim {s['dim']}, {s['grid'][0]}x{s['grid'][1]} image, {s['draws']} q/k draws, seed {s['seed']}.",
        "",
        "| scheme | v/h | locality | nearer / same / farther ring | 1st image after "
        f"{last} text (x uniform) | PTD (3x3 + 5) | passes |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for key, row in summary["schemes"].items():
        lines.append(
            f"| {key} | {row['ratio']:.3f} | {row['locality']:.2f} | {row['nearer']:.2f} / {row['same']:.2f} / "
            f"{row['farther']:.2f} | {row['decay_relative'][last]:.2f} | {row['ptd_paper']:.2f} | "
            f"{passes(key, row)} |")
    lines += ["", f"passes: v/h in [{RATIO_RANGE[0]}, {RATIO_RANGE[1]}] and, with the outward mask, "
              "no mass on farther rings (centre-outward)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--grid", default="24x24")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--out", default=os.path.join(_HERE, "results", "continuity"))
    p.add_argument("--from-results", default=None, metavar="JSON", help="rebuild the table only")
    args = p.parse_args(argv)
    if args.from_results:
        with open(args.from_results) as f:
            summary = json.load(f)
    else:
        h, w = (int(v) for v in args.grid.lower().split("x"))
        settings = DiagnoseSettings(grid=(h, w), dim=args.dim, draws=args.draws)
        with tempfile.TemporaryDirectory() as pngs:
            res = run_diagnose(pngs, settings, scheme_by_key(scheme_keys()), out=io.StringIO(), progress=False)
        summary = summarise(res["results"], settings)
    text = table(summary)
    os.makedirs(args.out, exist_ok=True)
    s = summary["settings"]
    stem = os.path.join(args.out, f"diagnose_dim{s['dim']}_{s['grid'][0]}x{s['grid'][1]}")
    if not args.from_results:
        with open(stem + ".json", "w") as f:
            json.dump(summary, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
