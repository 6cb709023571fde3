"""`python -m c2rope check MODEL`: the command line of c2rope.hf.check, which builds the
model from its config at test size, patches it and compares it with the unpatched copy."""
from __future__ import annotations

from c2rope.hf.check import main as check_main


def add_arguments(parser) -> None:
    parser.add_argument("model", help="local model folder (its config.json) or a config.json file")


def run(args) -> int:
    return check_main(args.model)
