"""Command line: `python -m c2rope demo | info | check | families | diagnose` (also installed as `c2rope`).

Each command lives in its own module, imported only when that command runs, so one
command's dependencies (matplotlib for the pictures, the diagnostics for `diagnose`)
never break another: `info` works without matplotlib, and `demo` and `info` work even
if the diagnostics fail to import. A module defines add_arguments(parser) and run(args).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .plotting import MissingPlotsExtra



class UsageError(Exception):
    """Raised by a command's run() for arguments that do not fit its input (an option
    that does not apply to the model it names): printed under the command's usage,
    exit code 2, as argparse reports its own errors."""


# command -> (module, one-line help)
COMMANDS = {
    "demo": ("c2rope.cli.demo", "triplet positions, Chebyshev mask and PNGs on a synthetic prompt"),
    "info": ("c2rope.cli.info", "torch version, kernels built, which path each op takes per device, OpenMP threads"),
    "check": ("c2rope.cli.check", "is a model (local folder or config.json) supported on this transformers? "
              "builds it at 2 layers with random weights, patches, compares"),
    "families": ("c2rope.cli.families", "the model families c2rope patches on this transformers (--markdown: the "
                 "README's table)"),
    "diagnose": ("c2rope.cli.diagnose", "measure positional attention of 1D RoPE, C2RoPE, M-RoPE, "
                 "Circle-RoPE; markdown + PNG heat maps"),
}


def _top_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="c2rope", description=__doc__.splitlines()[0],
        epilog=f"commands:\n{listing}\n\n`c2rope COMMAND --help` lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1])  # prints the usage, or an error naming the commands; exits
        return 2  # not reached: parse_args exits on every input that is not a command
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"c2rope {name}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return module.run(args)
    except UsageError as exc:
        parser.error(str(exc))  # prints the usage and the reason; exits 2
    except MissingPlotsExtra as exc:
        print(f"c2rope {name}: error: {exc}", file=sys.stderr)
        return 1
