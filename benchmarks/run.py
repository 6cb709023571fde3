"""All c2rope benchmarks in one run: markdown tables and PNG plots.

    PYTHONPATH=. python benchmarks/run.py --device cpu            # CPU defaults: a few minutes on 2 cores
    PYTHONPATH=. python benchmarks/run.py --device cuda           # GPU defaults: 1k ... 32k tokens
    PYTHONPATH=. python benchmarks/run.py --device cpu --quick    # smoke run, tiny sizes, seconds

Sections (--sections, default all):
- rotary: c2rope's fused rotation vs HF's eager formula, torch.compile of that formula and
  Liger-Kernel (GPU, when installed), forward and forward + backward, against the
  memory-bandwidth limit measured in the same run (benchmarks/bench_rotary.py's cases);
- mask: the dense C kernel vs plain PyTorch vs a FlexAttention BlockMask: time and peak
  memory (prompt: [64 text, one 24x24 image] repeated, as benchmarks/bench_mask.py);
- e2e: one training step (forward, backward, SGD step) of a small Llama, patched with
  c2rope.patch_model vs unpatched, per attention implementation: overhead in percent.

Every figure is a median over --repeats runs with its interquartile range [p25, p75];
the implementations of one row are measured in the same process on the same inputs (the
e2e step alternates patched and unpatched runs). Peak memory is measured per call:
torch.cuda.max_memory_allocated on GPU; on CPU the process's peak resident set
(VmHWM, reset through /proc/self/clear_refs) with glibc's mmap threshold pinned so freed
buffers go back to the OS (the script re-executes itself once with
MALLOC_MMAP_THRESHOLD_ set for that).
Results go to --out (default ./bench_results): results.md and, with matplotlib, PNGs.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import os
import platform
import sys
import time
import traceback

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)  # bench_rotary / bench_mask
try:
    import c2rope
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.dirname(_HERE))
    import c2rope

import bench_mask  # noqa: E402
import bench_rotary  # noqa: E402
from c2rope.reference import chebyshev_mask_ref  # noqa: E402
from timing import measure, summary, sync  # noqa: E402

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"

DEFAULTS = {
    # (rotary sizes, rotary dtypes, mask sizes, e2e sequence, e2e attention implementations)
    "cpu": ("1024,4096", "float32", "4096,8192", 704, "eager,sdpa"),
    "cuda": ("1024,2048,4096,8192,16384,32768", "float32,bfloat16", "4096,8192,16384,32768", 4096,
             "eager,sdpa,flex_attention"),
}
QUICK = ("256,512", "float32", "1024,2048", 200, "eager,sdpa")


# --------------------------------------------------------------------- measuring


def fmt_ms(triple):
    med, lo, hi = (v * 1e3 for v in triple)
    return f"{med:.3f} [{lo:.3f}, {hi:.3f}]"


def _read_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_bytes(fn, device):
    """Extra memory at the peak of one call of fn (its result kept alive), or None."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_summary()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM)
        base = _read_status("VmRSS")
        out = fn()
        peak = _read_status("VmHWM") - base
        del out
        return max(peak, 0)
    except (OSError, KeyError):
        return None


def fmt_bytes(n):
    if n is None:
        return "n/a"
    return f"{n / 2**20:.1f} MiB"


# --------------------------------------------------------------------- rotary


def liger_rope():
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
    except Exception:  # not installed, or no Triton / GPU
        return None
    return liger_rotary_pos_emb


def rotary_section(args, device, out):
    rows = []
    liger = liger_rope() if device.type == "cuda" else None
    note = ("Liger-Kernel: measured" if liger else
            "Liger-Kernel: not measured (" + ("CPU run" if device.type != "cuda" else "not installed") + ")")
    out.append(f"Shapes: B=1, Hq={args.hq}, Hk={args.hk}, D={args.dim}; q/k are [B, H, S, D] views of "
               f"[B, S, H*D] projections (HF's layout). {note}. `x limit` = time / (bytes of the "
               "rotation at the bandwidth of a clone() of q+k measured in the same run).\n")
    out.append("| S | dtype | pass | implementation | ms: median [p25, p75] | vs HF eager | x limit |")
    out.append("|---:|---|---|---|---:|---:|---:|")
    for seq in args.rotary_sizes:
        case_args = argparse.Namespace(batch=1, seq=seq, hq=args.hq, hk=args.hk, dim=args.dim,
                                       repeats=args.repeats)
        for dtype_name in args.rotary_dtypes:
            dtype = getattr(torch, dtype_name)
            for backward in (False, True):
                label = "fwd+bwd" if backward else "fwd"
                results, bandwidth, _, limit = bench_rotary.run_case(case_args, dtype, device, backward)
                liger_error = None
                if liger is not None:
                    try:
                        results["Liger-Kernel"] = _time_liger(liger, case_args, dtype, device, backward)
                    except Exception as exc:  # noqa: BLE001 - a third-party failure is a result too
                        liger_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
                eager = results["HF eager"][0]
                for impl, triple in results.items():
                    rows.append(dict(seq=seq, dtype=dtype_name, pass_=label, impl=impl, ms=triple[0] * 1e3))
                    out.append(f"| {seq} | {dtype_name} | {label} | {impl} | {fmt_ms(triple)} | "
                               f"{eager / triple[0]:.2f}x | {triple[0] / limit:.2f} |")
                if liger_error:
                    out.append(f"| {seq} | {dtype_name} | {label} | Liger-Kernel | failed: {liger_error} | | |")
                rows.append(dict(seq=seq, dtype=dtype_name, pass_=label, impl="bandwidth limit", ms=limit * 1e3))
                out.append(f"| {seq} | {dtype_name} | {label} | bandwidth limit ({bandwidth / 1e9:.1f} GB/s) | "
                           f"{limit * 1e3:.3f} | {eager / limit:.2f}x | 1.00 |")
                print(f"  rotary S={seq} {dtype_name} {label} done", flush=True)
    return rows


def _time_liger(liger, case_args, dtype, device, backward):
    q, k, cos, sin = bench_rotary.make_inputs(case_args, dtype, device, backward)
    if backward:
        gq, gk = torch.randn_like(q), torch.randn_like(k)

        def step():
            oq, ok = liger(q, k, cos, sin)
            torch.autograd.backward((oq, ok), (gq, gk))
            q.grad = k.grad = None
    else:
        # Liger writes its result into q's and k's memory (like c2rope's in-place variant);
        # rotating the same buffers again costs the same, so no copies are timed.
        def step():
            with torch.no_grad():
                liger(q, k, cos, sin)
    return summary(measure(step, device, case_args.repeats, warmup=3))


# --------------------------------------------------------------------- mask


def mask_section(args, device, out):
    rows = []
    config = c2rope.C2RoPEConfig()
    out.append("Prompt: [64 text tokens, one 24x24 image] repeated up to S, batch 1, mask=outward, bool "
               "output (True = may attend). Dense masks hold S*S bytes; the BlockMask keeps per-block "
               f"indices only. Plain PyTorch is skipped above S={args.torch_max}.\n")
    out.append("| S | images | method | ms: median [p25, p75] | peak memory |")
    out.append("|---:|---:|---|---:|---:|")
    for seq in args.mask_sizes:
        layout = bench_mask.make_layout(seq, 1).to(device)
        methods = {"dense C kernel": lambda: c2rope.chebyshev_mask(layout, config, torch.bool)}
        if seq <= args.torch_max:
            methods["plain PyTorch"] = lambda: chebyshev_mask_ref(
                layout.valid, layout.image_id, layout.ring, 0, seq, "outward", torch.bool)
        methods["FlexAttention BlockMask"] = lambda: c2rope.chebyshev_block_mask(layout, config)
        for name, fn in methods.items():
            memory = peak_bytes(fn, device)
            triple = summary(measure(fn, device, args.repeats, warmup=1))
            rows.append(dict(seq=seq, method=name, ms=triple[0] * 1e3, mib=None if memory is None else memory / 2**20))
            out.append(f"| {seq} | {len(layout.spans[0])} | {name} | {fmt_ms(triple)} | {fmt_bytes(memory)} |")
        if seq > args.torch_max:
            out.append(f"| {seq} | {len(layout.spans[0])} | plain PyTorch | skipped (--torch-max) | |")
        print(f"  mask S={seq} done", flush=True)
    return rows


# --------------------------------------------------------------------- end to end


IMAGE_TOKEN = 999


def small_llama(attn, dim_scale, device):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=64 * dim_scale, intermediate_size=128 * dim_scale, num_hidden_layers=4,
        num_attention_heads=2 * dim_scale, num_key_value_heads=dim_scale, head_dim=32,
        max_position_embeddings=65536, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config).to(device)
    model.set_attn_implementation(attn)
    return model.train()


def e2e_prompt(seq, device):
    """(ids [1, seq], grid): random text ids with one image run in the middle, 24x24 when
    it fits (as LLaVA-1.5 splices it), else as many rows of 24 as fit."""
    rows = max(1, min(24, (seq - 2) // 24))
    grid = (rows, 24) if seq >= 26 else (1, max(1, seq - 2))
    ids = torch.randint(1, IMAGE_TOKEN, (1, seq))
    start = (seq - grid[0] * grid[1]) // 2
    ids[0, start : start + grid[0] * grid[1]] = IMAGE_TOKEN
    return ids.to(device), grid


def e2e_section(args, device, out):
    rows = []
    try:
        from c2rope.hf import patch_model
    except Exception as exc:  # noqa: BLE001
        out.append(f"not available: patch_model missing ({type(exc).__name__}: {exc})")
        print("  e2e: not available: patch_model missing", flush=True)
        return rows
    try:
        import transformers  # noqa: F401
    except ImportError:
        out.append("not available: transformers is not installed")
        return rows
    seq = args.e2e_seq
    ids, grid = e2e_prompt(seq, device)
    out.append(f"Llama: 4 layers, hidden {64 * args.e2e_scale}, {2 * args.e2e_scale} heads of 32 "
               f"(GQA {args.e2e_scale} kv heads), vocab 1000; batch 1, S={seq} with one {grid[0]}x{grid[1]} "
               "image run; one step = forward with labels, backward, SGD step. Patched = "
               "c2rope.patch_model(model, C2RoPEConfig(), image_token_id, grid): C2RoPE positions, fused "
               "rotary, Chebyshev mask. Runs alternate patched / unpatched; `overhead` is the median "
               "of the per-pair time ratios [p25, p75].\n")
    out.append("| attention | unpatched ms | patched ms | overhead |")
    out.append("|---|---:|---:|---:|")
    for attn in args.e2e_attn:
        if attn == "flex_attention" and device.type == "cpu":
            # torch raises NotImplementedError for FlexAttention's backward on CPU.
            out.append("| flex_attention | not measured: FlexAttention has no backward on CPU "
                       "(run with --device cuda) | | |")
            continue
        try:
            torch.manual_seed(0)
            plain = small_llama(attn, args.e2e_scale, device)
            patched = patch_model(copy.deepcopy(plain), c2rope.C2RoPEConfig(), image_token_id=IMAGE_TOKEN,
                                  grid=grid)
            steps = {name: _train_step(model, ids) for name, model in (("plain", plain), ("patched", patched))}
            for _ in range(2):  # warm-up (and compilation for flex_attention)
                steps["plain"]()
                steps["patched"]()
            sync(device)
            times = {"plain": [], "patched": []}
            for r in range(args.repeats):
                order = ("plain", "patched") if r % 2 == 0 else ("patched", "plain")
                for name in order:
                    start = time.perf_counter()
                    steps[name]()
                    sync(device)
                    times[name].append(time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next implementation
            out.append(f"| {attn} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | |")
            traceback.print_exc()
            continue
        ratios = [p / u for p, u in zip(times["patched"], times["plain"])]
        over = [100 * (r - 1) for r in summary(ratios)]
        base, mine = summary(times["plain"]), summary(times["patched"])
        rows.append(dict(attn=attn, plain=base[0] * 1e3, patched=mine[0] * 1e3, overhead=over[0],
                         lo=over[1], hi=over[2]))
        out.append(f"| {attn} | {fmt_ms(base)} | {fmt_ms(mine)} | {over[0]:+.1f}% [{over[1]:+.1f}, {over[2]:+.1f}] |")
        print(f"  e2e {attn} done", flush=True)
    return rows


def _train_step(model, ids):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# --------------------------------------------------------------------- plots


def plot(out_dir, rotary_rows, mask_rows, e2e_rows):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    paths = []
    if rotary_rows:
        keys = sorted({(r["dtype"], r["pass_"]) for r in rotary_rows})
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
        for ax, (dtype, label) in zip(axes[0], keys):
            sel = [r for r in rotary_rows if r["dtype"] == dtype and r["pass_"] == label]
            for impl in dict.fromkeys(r["impl"] for r in sel):
                pts = [(r["seq"], r["ms"]) for r in sel if r["impl"] == impl]
                style = "k--" if impl == "bandwidth limit" else "o-"
                ax.plot(*zip(*pts), style, label=impl)
            ax.set(xscale="log", yscale="log", xlabel="tokens S", ylabel="ms (median)", title=f"rotary {label}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        paths.append(_save(fig, out_dir, "rotary.png"))
    if mask_rows:
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        for method in dict.fromkeys(r["method"] for r in mask_rows):
            sel = [r for r in mask_rows if r["method"] == method]
            ax_t.plot([r["seq"] for r in sel], [r["ms"] for r in sel], "o-", label=method)
            mem = [(r["seq"], r["mib"]) for r in sel if r["mib"]]  # log axis: no None / 0
            if mem:
                ax_m.plot(*zip(*mem), "o-", label=method)
        ax_t.set(xscale="log", yscale="log", xlabel="tokens S", ylabel="ms (median)", title="Chebyshev mask: time")
        ax_m.set(xscale="log", yscale="log", xlabel="tokens S", ylabel="MiB", title="Chebyshev mask: peak memory")
        for ax in (ax_t, ax_m):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir, "mask.png"))
    if e2e_rows:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        names = [r["attn"] for r in e2e_rows]
        med = [r["overhead"] for r in e2e_rows]
        err = [[m - r["lo"] for m, r in zip(med, e2e_rows)], [r["hi"] - m for m, r in zip(med, e2e_rows)]]
        ax.bar(names, med, yerr=err, capsize=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(ylabel="training-step overhead (%)", title="patched vs unpatched Llama")
        paths.append(_save(fig, out_dir, "e2e.png"))
    return paths


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# --------------------------------------------------------------------- main


def _list(text, cast=str):
    return [cast(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sections", default="rotary,mask,e2e", help="comma list of rotary, mask, e2e")
    parser.add_argument("--out", default="bench_results", help="directory for results.md and the plots")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 10, quick 3)")
    parser.add_argument("--rotary-sizes", default=None, help="comma list of S (default: per device)")
    parser.add_argument("--rotary-dtypes", default=None, help="comma list (default: cpu float32, cuda +bfloat16)")
    parser.add_argument("--hq", type=int, default=32)
    parser.add_argument("--hk", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--mask-sizes", default=None, help="comma list of S (default: cpu 4k,8k; cuda 4k...32k)")
    parser.add_argument("--torch-max", type=int, default=None,
                        help="largest S for the plain-PyTorch mask (several S*S temporaries; default cpu 8192, "
                             "cuda 32768)")
    parser.add_argument("--e2e-seq", type=int, default=None, help="tokens per training step (default cpu 704, cuda 4096)")
    parser.add_argument("--e2e-attn", default=None, help="comma list of eager, sdpa, flex_attention "
                        "(default cpu eager,sdpa: torch has no FlexAttention backward on CPU; cuda all three)")
    parser.add_argument("--e2e-scale", type=int, default=None, help="width multiplier of the Llama (default cpu 2, cuda 8)")
    args = parser.parse_args(argv)
    rot_sizes, rot_dtypes, mask_sizes, e2e_seq, e2e_attn = QUICK if args.quick else DEFAULTS[args.device]
    args.sections = _list(args.sections)
    unknown = set(args.sections) - {"rotary", "mask", "e2e"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.rotary_sizes = _list(args.rotary_sizes or rot_sizes, int)
    args.rotary_dtypes = _list(args.rotary_dtypes or rot_dtypes)
    args.mask_sizes = _list(args.mask_sizes or mask_sizes, int)
    args.torch_max = args.torch_max or (8192 if args.device == "cpu" else 32768)
    args.e2e_seq = args.e2e_seq or e2e_seq
    args.e2e_attn = _list(args.e2e_attn or e2e_attn)
    args.e2e_scale = args.e2e_scale or (1 if args.quick else 2 if args.device == "cpu" else 8)
    if args.quick and args.hq == 32:
        args.hq, args.hk = 8, 2
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu" and MMAP_ENV not in os.environ and sys.platform.startswith("linux") and argv is None:
        # Pin glibc's mmap threshold so freed buffers leave the resident set (peak memory).
        os.environ[MMAP_ENV] = str(128 * 1024)
        os.execv(sys.executable, [sys.executable] + sys.argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    os.makedirs(args.out, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    lines = [
        "# c2rope benchmarks",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; device {device} ({name}); "
        f"torch {torch.__version__}, c2rope {c2rope.__version__}; torch threads {torch.get_num_threads()}, "
        f"c2rope OpenMP threads {torch.ops.c2rope.openmp_max_threads()}; {args.repeats} timed runs per figure"
        + (" (--quick smoke run: sizes too small to mean anything)" if args.quick else "") + ".",
        "",
    ]
    sections = {
        "rotary": ("Rotary embedding (apply_rotary_pos_emb)", rotary_section),
        "mask": ("Chebyshev mask", mask_section),
        "e2e": ("End to end: one training step", e2e_section),
    }
    rows = {}
    for key, (title, section) in sections.items():
        if key not in args.sections:
            continue
        print(f"{key} ...", flush=True)
        lines += [f"## {title}", ""]
        try:
            rows[key] = section(args, device, lines)
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            traceback.print_exc()
            lines.append(f"\nsection failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        lines.append("")
    plots = plot(args.out, rows.get("rotary", []), rows.get("mask", []), rows.get("e2e", []))
    if plots:
        lines += ["Plots: " + ", ".join(os.path.basename(p) for p in plots), ""]
    path = os.path.join(args.out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"\nWrote {path}" + "".join(f"\n      {p}" for p in plots))


if __name__ == "__main__":
    main()
