"""A one-line text progress bar on stderr (no dependency), silent when not wanted."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """`step(label)` after each unit of work (label: what was just done); `close()`
    ends the line.

    enabled=None shows the bar only when the stream is a terminal, so logs and test
    output stay clean."""

    def __init__(self, total: int, enabled: Optional[bool] = None, stream: Optional[TextIO] = None,
                 width: int = 28):
        self.total = max(1, int(total))
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled if enabled is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.done = 0
        self.start = time.perf_counter()

    def step(self, label: str = "") -> None:
        self.done = min(self.total, self.done + 1)
        if not self.enabled:
            return
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"\r[{bar}] {self.done}/{self.total} {elapsed:5.1f}s {label}"
        self.stream.write(line[:120].ljust(120))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
