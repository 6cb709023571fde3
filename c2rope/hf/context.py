"""Per-call data of a patched model, kept per thread.

What one forward call needs to pass from the wrapper that sees it first (the model's
top-level forward: raw input_ids, `visual_layout=`) to the code that uses it later (the
decoder wrapper, the rotary adapter) lives in a frame on a thread-local stack, never on
the model: one patched model called from two threads at once gives each call its own
positions, and a call that fails leaves nothing behind (the frame is popped in a
`finally`). Frames are looked up by the model's state object, so a deep copy of a
patched model (which has its own state) never reads the original's frames.

The push/pop/lookup functions run eagerly even inside torch.compile'd code
(`torch.compiler.disable`): they are plain Python bookkeeping, run once per call.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

import torch

_local = threading.local()


class CallFrame:
    """One call of one patched model."""

    __slots__ = ("state", "input_ids", "visual_layout", "chunk_spans", "positions", "mask")

    def __init__(self, state, input_ids=None, visual_layout=None):
        self.state = state
        self.input_ids = input_ids  # raw ids seen by the top-level forward
        self.visual_layout = visual_layout  # `visual_layout=` given to the top-level forward
        # Image spans of this call's input_ids (relative to its first token) that a family
        # derived itself (anyres: from image_sizes); None = search input_ids with the grid.
        self.chunk_spans = None
        self.positions: Optional[torch.Tensor] = None  # float32 [B, q, 3] while the decoder runs
        self.mask: Any = None  # the mask handed to the decoder (read by verify_patch)


def _stack():
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


@torch.compiler.disable
def push(frame: CallFrame) -> CallFrame:
    _stack().append(frame)
    return frame


@torch.compiler.disable
def pop(frame: CallFrame) -> None:
    stack = _stack()
    if frame in stack:
        # Remove this frame and anything a failed inner call left above it.
        del stack[stack.index(frame):]


@torch.compiler.disable
def current(state) -> Optional[CallFrame]:
    """The innermost frame of `state`'s model in this thread, or None."""
    for frame in reversed(_stack()):
        if frame.state is state:
            return frame
    return None


@torch.compiler.disable
def innermost() -> Optional[CallFrame]:
    stack = _stack()
    return stack[-1] if stack else None


@torch.compiler.disable
def current_positions(state) -> Optional[torch.Tensor]:
    frame = current(state)
    return None if frame is None else frame.positions


@contextlib.contextmanager
def call_frame(state, **values) -> Iterator[CallFrame]:
    frame = push(CallFrame(state, **values))
    try:
        yield frame
    finally:
        pop(frame)
