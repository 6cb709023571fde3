"""The documented Python entry of the check before it moved to the presentation wing
(`c2rope.hf.check.main(path, config, options)`); the code is c2rope/cli/check_model.py.
Imported only when asked for: the library core never imports c2rope.cli."""
from c2rope.cli.check_model import CheckResult, CheckUsageError, NotSupported, main, prepare, run_check, shrink

__all__ = ["CheckResult", "CheckUsageError", "NotSupported", "main", "prepare", "run_check", "shrink"]
