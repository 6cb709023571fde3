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


class ThreadMemory(threading.local):
    """Per-thread memory of one patched model's state objects (the last prompt's spans,
    a packed row's positions). A deep copy of the model starts with empty memory: what
    the original remembered belongs to its own calls, and a plain threading.local cannot
    be copied at all (copy.deepcopy raised TypeError on a patched Qwen-VL model)."""

    def __deepcopy__(self, memo):
        return type(self)()


class CallFrame:
    """One call of one patched model."""

    __slots__ = ("state", "input_ids", "visual_layout", "chunk_spans", "positions", "mask", "opener", "path",
                 "images_given", "encodes_images", "tables", "check", "plan", "cache")

    def __init__(self, state, input_ids=None, visual_layout=None, opener=None, path=()):
        self.state = state
        self.input_ids = input_ids  # raw ids seen by an outer module (before they became embeddings)
        self.visual_layout = visual_layout  # `visual_layout=` given to the call
        # Image spans of this call's input_ids (relative to its first token) that a family
        # derived itself (anyres: from image_sizes); None = search input_ids with the grid.
        self.chunk_spans = None
        self.positions: Optional[torch.Tensor] = None  # float32 [B, q, 3] while the decoder runs
        self.mask: Any = None  # the mask handed to the decoder (read by the checks)
        self.opener = opener  # the module whose call opened this frame (None: a `with call_frame`)
        self.path = tuple(path)  # names of the c2rope entry points this call went through
        self.images_given = False  # an outer module received pixel values (or encoded images)
        self.encodes_images = False  # the call went through a module that encodes its own images
        self.tables: Any = None  # the (cos, sin) the rotary adapter returned in this call
        self.check: Any = None  # the first-training-forward check running in this call
        self.plan: Any = None  # the decoder's CallPlan (state.py)
        self.cache: Any = None  # the cache the decoder was given


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


@torch.compiler.disable
def note_tables(state, tables) -> None:
    """The rotary adapter's (cos, sin) for the running call (read by the checks)."""
    frame = current(state)
    if frame is not None:
        frame.tables = tables


@contextlib.contextmanager
def call_frame(state, **values) -> Iterator[CallFrame]:
    frame = push(CallFrame(state, **values))
    try:
        yield frame
    finally:
        pop(frame)


@torch.compiler.disable
def open_frame(state, opener, name: str, input_ids=None, visual_layout=None) -> CallFrame:
    """Push the frame of one call of `opener` (a module of `state`'s model), carrying
    over what an enclosing call of the same model already knows: its visual_layout,
    its raw input_ids when this call has none, the images it was given.

    A frame of the same opener still on the stack is left over from a call that never
    reached its closing hook (an exception inside compiled code): it and everything
    above it are dropped, so stale layouts never leak into this call."""
    stack = _stack()
    for index, frame in enumerate(stack):
        if frame.opener is opener and frame.state is state:
            del stack[index:]
            break
    outer = current(state)
    frame = CallFrame(state, opener=opener)
    if outer is not None:
        frame.input_ids, frame.visual_layout = outer.input_ids, outer.visual_layout
        frame.chunk_spans, frame.images_given = outer.chunk_spans, outer.images_given
        frame.encodes_images = outer.encodes_images
        frame.path = outer.path
    if input_ids is not None:
        frame.input_ids = input_ids
    if visual_layout is not None:
        frame.visual_layout = visual_layout
    frame.path = frame.path + (name,)
    stack.append(frame)
    return frame


@torch.compiler.disable
def close_frame(state, opener) -> Optional[CallFrame]:
    """Pop the innermost frame `opener` opened (and anything a failed inner call left
    above it). Returns it, or None when there is none (its opening hook did not run)."""
    stack = _stack()
    for index in range(len(stack) - 1, -1, -1):
        frame = stack[index]
        if frame.opener is opener and frame.state is state:
            del stack[index:]
            return frame
    return None
