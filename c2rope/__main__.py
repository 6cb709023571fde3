"""Command line: `python -m c2rope demo | info | diagnose` (also installed as `c2rope`)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import List, Optional


def _cmd_demo(args) -> int:
    from .config import C2RoPEConfig
    from .demo import run_demo

    try:
        config = C2RoPEConfig.from_name("paper" if args.paper_code else args.config)
    except ValueError as exc:
        print(f"c2rope demo: error: --config: {exc}", file=sys.stderr)
        return 2
    if args.mask is not None:
        config = dataclasses.replace(config, mask=args.mask)
    run_demo(out_dir=args.out, config=config, seed=args.seed)
    return 0


def _cmd_diagnose(args) -> int:
    from .diagnose import main_diagnose

    return main_diagnose(args)


def _cuda_kernels_registered() -> bool:
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key("c2rope::rotary", "CUDA")


def _cmd_info(args) -> int:
    import torch

    import c2rope

    ops = torch.ops.c2rope
    print(f"c2rope {c2rope.__version__} ({c2rope.__file__})")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print("kernels: CPU (C11 + OpenMP)")
    if ops.built_with_cuda():
        archs = ops.cuda_archs()
        print(f"         CUDA: built, archs {archs}; registered: {_cuda_kernels_registered()}")
        if torch.cuda.is_available():
            print(f"         device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
        else:
            print("         no CUDA device visible")
    else:
        print("         CUDA: not built")
    print(f"OpenMP max threads: {ops.openmp_max_threads()} (torch intra-op threads: {torch.get_num_threads()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="c2rope", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="triplet positions, Chebyshev mask and PNGs on a synthetic prompt")
    demo.add_argument("--out", default="c2rope_demo", help="directory for the PNGs (default: ./c2rope_demo)")
    demo.add_argument("--config", default="default",
                      help="C2RoPEConfig.from_name name: default, seed, paper, or <temporal>-<band>[-<mask>] "
                           "such as shared-spread (default: default)")
    demo.add_argument("--mask", default=None, choices=("outward", "inward", "causal"),
                      help="mask inside images (default: the config's)")
    demo.add_argument("--paper-code", action="store_true",
                      help="use C2RoPEConfig.paper_code() (merged, concentric, inward, blocked)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random text ids and q/k")
    demo.set_defaults(run=_cmd_demo)

    info = sub.add_parser("info", help="torch version, kernels built, OpenMP threads")
    info.set_defaults(run=_cmd_info)

    from .diagnose import add_diagnose_arguments

    diagnose = sub.add_parser("diagnose", help="measure positional attention of 1D RoPE, C2RoPE, M-RoPE, "
                              "Circle-RoPE; markdown + PNG heat maps")
    add_diagnose_arguments(diagnose)
    diagnose.set_defaults(run=_cmd_diagnose)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
