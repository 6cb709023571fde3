"""Undoable patching primitives: every change a patcher makes goes through a PatchRecord,
so `unpatch_model` can put each attribute back exactly as it was (or delete it when it
did not exist, which brings back the class attribute, e.g. the class's `forward`)."""
from __future__ import annotations

import functools
import sys
import types
from typing import Any, Callable, Dict, List, Tuple

import torch

_MISSING = object()


class PatchRecord:
    """The changes made to one model, in order; `undo()` reverts them newest first."""

    def __init__(self, model: torch.nn.Module, config, family: str):
        self.model = model
        self.config = config
        self.family = family
        self._changes: List[Tuple[Any, str, Any]] = []

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """setattr, remembering the previous *instance-level* value (or its absence)."""
        if isinstance(obj, torch.nn.Module) and name in obj._modules:
            old = obj._modules[name]
        else:
            old = vars(obj).get(name, _MISSING)
        self._changes.append((obj, name, old))
        setattr(obj, name, value)

    def wrap_forward(self, module: torch.nn.Module, make_wrapper: Callable[[Callable], Callable]) -> None:
        """Replace `module.forward` on this instance only by `make_wrapper(original)`.

        The wrapper keeps the original's name, docstring and signature
        (`functools.wraps`), which transformers inspects (e.g. generate() checks whether
        forward accepts `position_ids`)."""
        original = module.forward
        wrapper = functools.wraps(original)(make_wrapper(original))
        self.set_attr(module, "forward", wrapper)

    def undo(self) -> None:
        while self._changes:
            obj, name, old = self._changes.pop()
            if old is _MISSING:
                if name in vars(obj):
                    delattr(obj, name)
            else:
                setattr(obj, name, old)


_REBOUND = {}


def rebind_globals(function: Callable, replacements: Dict[str, Any]) -> Callable:
    """A copy of `function` that looks up its global names in a copy of its module's
    globals with `replacements` applied.

    This is how a patch reroutes a module-level helper (e.g. `apply_rotary_pos_emb`,
    called by name from an attention forward) for ONE module instance, without touching
    the transformers module that every other model shares. The copied namespace is a
    real module registered in sys.modules under its own name: torch.compile resolves a
    function's globals through `__name__`, and would otherwise guard on (and call) the
    original transformers module's entries. Copies are cached, one per function and
    replacement set, so every layer of every patched model shares one."""
    if isinstance(function, types.MethodType):
        raise TypeError("rebind_globals expects a plain function (use type(module).forward)")
    missing = [name for name in replacements if name not in function.__globals__]
    if missing:
        raise ValueError(f"{function.__qualname__} does not use the globals {missing}")
    key = (function, tuple(sorted((name, id(value)) for name, value in replacements.items())))
    cached = _REBOUND.get(key)
    if cached is not None:
        return cached[0]
    module_name = f"c2rope.hf._rebound{len(_REBOUND)}.{function.__globals__.get('__name__', 'module')}"
    namespace = types.ModuleType(module_name)
    namespace.__dict__.update(function.__globals__)
    namespace.__dict__.update(replacements)
    namespace.__name__ = module_name
    sys.modules[module_name] = namespace
    clone = types.FunctionType(
        function.__code__, namespace.__dict__, function.__name__, function.__defaults__, function.__closure__
    )
    clone.__kwdefaults__ = function.__kwdefaults__
    clone.__dict__.update(function.__dict__)
    clone.__qualname__ = function.__qualname__
    clone.__doc__ = function.__doc__
    # keep the replacement objects alive with the cache entry (the key holds their ids)
    _REBOUND[key] = (clone, tuple(replacements.values()))
    return clone


def bind_forward_with_globals(record: PatchRecord, module: torch.nn.Module, replacements: Dict[str, Any]) -> None:
    """Make `module` (one instance) run its class's forward with some globals replaced."""
    function = type(module).forward
    if not isinstance(function, types.FunctionType):
        raise TypeError(f"{type(module).__name__}.forward is not a plain function; cannot rebind it")
    record.set_attr(module, "forward", types.MethodType(rebind_globals(function, replacements), module))
