"""`python -m c2rope check MODEL`: the command line of c2rope.hf.check, which builds the
model from its config at test size, patches it and compares it with the unpatched copy."""
from __future__ import annotations

from c2rope.hf.check import main as check_main
from c2rope.hf.qwen_c2rope import FRAME_AXES, FREQUENCIES  # patch_model's Qwen-VL options


def add_arguments(parser) -> None:
    parser.add_argument("model", help="local model folder (its config.json) or a config.json file")
    parser.add_argument("--config", default=None, metavar="NAME",
                        help="the C2RoPEConfig to patch with, by C2RoPEConfig.from_name name (default, seed, "
                             "paper, recommended, shared-high, ...); default: the family's default")
    parser.add_argument("--frequencies", choices=FREQUENCIES, default=None,
                        help="Qwen-VL only: rotate by the model's own M-RoPE sections or c2rope's split")
    parser.add_argument("--frame-axis", choices=FRAME_AXES, default=None,
                        help="Qwen-VL only: video frame index folded into m, or on its own slots")


def run(args) -> int:
    import c2rope

    config = None
    if args.config is not None:
        try:
            config = c2rope.C2RoPEConfig.from_name(args.config)
        except ValueError as exc:
            print(f"c2rope check: --config: {exc}")
            return 2
    # Other families refuse Qwen-VL options, so they are passed on only when given.
    options = {name: value for name, value in (("frequencies", args.frequencies), ("frame_axis", args.frame_axis))
               if value is not None}
    return check_main(args.model, config, options or None)
