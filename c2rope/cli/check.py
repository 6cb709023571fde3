"""`python -m c2rope check MODEL`: the command line of c2rope.cli.check_model, which builds the
model from its config at test size, patches it and compares it with the unpatched copy.

Arguments that do not fit the model (a --config name that does not exist, a Qwen-VL
option on another family) are usage errors: argparse's usage line and the reason, exit
code 2, never a verdict on the model."""
from __future__ import annotations

from c2rope.hf.families.qwen_vl.c2rope_patch import FRAME_AXES, FREQUENCIES  # patch_model's Qwen-VL options

from .main import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("model", help="local model folder (its config.json) or a config.json file")
    parser.add_argument("--config", default=None, metavar="NAME",
                        help="the C2RoPEConfig to patch with, by C2RoPEConfig.from_name name (default, seed, "
                             "paper, recommended, shared-high, ...); default: the family's default")
    parser.add_argument("--frequencies", choices=FREQUENCIES, default=None,
                        help="Qwen-VL only: rotate by the model's own M-RoPE sections or c2rope's split")
    parser.add_argument("--frame-axis", choices=FRAME_AXES, default=None,
                        help="Qwen-VL only: video frame index folded into m, or on its own slots")


def _check_options_fit(model: str, config, options: dict) -> None:
    """UsageError when the options do not apply to the model config.json names. A file
    that cannot be read is left to the check itself, which reports why."""
    from .check_model import CheckUsageError, check_usage
    from c2rope.hf.check_input import CheckInputError, config_path, read_fields

    try:
        model_type = read_fields(config_path(model))["model_type"]
    except CheckInputError:
        return
    try:
        check_usage(model_type, config, options or None)
    except CheckUsageError as exc:
        given = " ".join(f"--{name.replace('_', '-')}" for name in options)
        raise UsageError(f"{given}: {exc} ({model}); the Qwen-VL options apply to qwen2_vl, qwen2_5_vl and "
                         f"qwen3_vl models only") from None


def run(args) -> int:
    import c2rope
    from .check_model import main as check_main

    config = None
    if args.config is not None:
        try:
            config = c2rope.C2RoPEConfig.from_name(args.config)
        except ValueError as exc:
            raise UsageError(f"--config: {exc}") from None
    # Other families take no options: they are passed on only when given.
    options = {name: value for name, value in (("frequencies", args.frequencies), ("frame_axis", args.frame_axis))
               if value is not None}
    _check_options_fit(args.model, config, options)
    return check_main(args.model, config, options or None)
