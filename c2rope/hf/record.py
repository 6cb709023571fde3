"""Undoable patching primitives: every change a patcher makes goes through a PatchRecord,
so `unpatch_model` can put each attribute back exactly as it was (or delete it when it
did not exist, which brings back the class attribute, e.g. the class's `forward`), and
remove each forward hook by its handle. Unpatching removes c2rope's layer only: a c2rope
wrapper that something else was wrapped around since is disarmed in place (a transparent
pass-through, `Disarmable`) instead of being put back, which would delete the wrapper
above it.

The forwards a patch installs are small objects (`PatchedForward`, `ReboundForward`)
that hold the module they belong to as an attribute, never in a closure: a deep copy of
a patched model therefore gets wrappers that run the copy's own weights, and its record
undoes the copy. Pickling a patched model raises an error that says to unpatch first
(the state_dict is unchanged by patching and saves as usual).
"""
from __future__ import annotations

import copy
import inspect
import sys
import types
from typing import Any, Callable, Dict, List, Tuple

import torch

from .introspect import rebind_through_decorators

class _Missing:
    """Marks an attribute the instance did not have; one object, kept by deep copies."""

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()
_PICKLE_MESSAGE = (
    "c2rope: a patched model cannot be pickled (torch.save(model)): call c2rope.unpatch_model(model) "
    "first, or save model.state_dict(), which patching leaves unchanged"
)


class Unpicklable:
    """Refuses pickling with a clear message; deep copies copy every attribute (so a
    copied model's wrappers refer to the copied modules)."""

    def __reduce_ex__(self, protocol):
        raise TypeError(_PICKLE_MESSAGE)

    def __deepcopy__(self, memo):
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for name, value in vars(self).items():
            setattr(clone, name, copy.deepcopy(value, memo))
        return clone


class Disarmable:
    """A layer c2rope installs that can become a transparent pass-through. Unpatching
    puts the previous attribute back when the layer is still where c2rope put it; when
    something was installed on top of it since (accelerate's autocast wrapper, TRL's
    fused LM head, which keep a reference to it), the layer stays where it is, disarmed,
    so the wrapper above keeps working and c2rope's behaviour is gone."""

    armed = True

    def disarm(self) -> None:
        self.armed = False


class PatchRecord(Unpicklable):
    """The changes made to one model, in order; `undo()` reverts them newest first."""

    def __init__(self, model: torch.nn.Module, family: str):
        self.model = model
        self.family = family
        self.state = None
        # (decoder, attention layers) for pipeline.verify_patch, or a callable probe(state)
        self.probe = None
        # Modules whose calls open c2rope's call frames, outermost first: (path name, module)
        self.entry_points: List[Tuple[str, torch.nn.Module]] = []
        self.delivery = None  # pipeline.Delivery of the decoder (what reaching a layer means)
        self._changes: List[Tuple[Any, str, Any, Any]] = []

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """setattr, remembering the previous *instance-level* value (or its absence)."""
        if isinstance(obj, torch.nn.Module) and name in obj._modules:
            old = obj._modules[name]
        else:
            old = vars(obj).get(name, _MISSING)
        self._changes.append((obj, name, old, value))
        setattr(obj, name, value)

    def wrap_forward(self, module: torch.nn.Module, handler: Callable, *context: Any,
                     extra_keyword: str = None, attribute: str = "forward") -> None:
        """Make `module.<attribute>(...)` (default: `module(...)`) run
        `handler(original, *context, *args, **kwargs)`, on this instance only."""
        original = getattr(module, attribute)
        self.set_attr(module, attribute, PatchedForward(original, handler, context, extra_keyword))

    def add_hooks(self, module: torch.nn.Module, pre_hook: Callable, post_hook: Callable) -> None:
        """A forward pre-hook (sees and may replace args and kwargs) and an always-called
        forward hook (runs even when the forward raises) on `module`; unpatching removes
        them by their handles, whatever was wrapped around `module.forward` since."""
        self._changes.append((module.register_forward_pre_hook(pre_hook, with_kwargs=True), _HOOK, None, None))
        self._changes.append((module.register_forward_hook(post_hook, with_kwargs=True, always_call=True), _HOOK,
                              None, None))

    def undo(self) -> None:
        while self._changes:
            obj, name, old, new = self._changes.pop()
            if name is _HOOK:
                obj.remove()
                continue
            if isinstance(new, Disarmable) and _current(obj, name) is not new:
                new.disarm()  # wrapped since: stays under the wrapper, as a pass-through
                continue
            if old is _MISSING:
                if name in vars(obj) or (isinstance(obj, torch.nn.Module) and name in obj._modules):
                    delattr(obj, name)
            else:
                setattr(obj, name, old)


_HOOK = "<hook>"


def _current(obj: Any, name: str) -> Any:
    if isinstance(obj, torch.nn.Module) and name in obj._modules:
        return obj._modules[name]
    return vars(obj).get(name, _MISSING)


class PatchedForward(Disarmable, Unpicklable):
    """An instance-level `forward`: calls `handler(original, *context, *args, **kwargs)`.

    Looks like the original to transformers, which inspects forward signatures (e.g.
    generate() validates its keyword arguments against them): `__signature__` is the
    original's, plus `extra_keyword` (keyword-only) when given."""

    def __init__(self, original: Callable, handler: Callable, context: tuple, extra_keyword: str = None):
        self.original = original
        self.handler = handler
        self.context = context
        self.extra_keyword = extra_keyword
        self.__wrapped__ = original
        self.__name__ = getattr(original, "__name__", "forward")
        self.__doc__ = getattr(original, "__doc__", None)

    def __call__(self, *args, **kwargs):
        if not self.armed:
            if self.extra_keyword is not None and kwargs.pop(self.extra_keyword, None) is not None:
                raise TypeError(f"{self.extra_keyword}= was given, but c2rope no longer patches this model "
                                "(c2rope.unpatch_model was called)")
            return self.original(*args, **kwargs)
        return self.handler(self.original, *self.context, *args, **kwargs)

    @property
    def __signature__(self):
        signature = inspect.signature(self.original)
        if self.extra_keyword is None:
            return signature
        parameters = list(signature.parameters.values())
        extra = inspect.Parameter(self.extra_keyword, inspect.Parameter.KEYWORD_ONLY, default=None)
        at = next((i for i, p in enumerate(parameters) if p.kind == p.VAR_KEYWORD), len(parameters))
        return signature.replace(parameters=parameters[:at] + [extra] + parameters[at:])


class ReboundForward(Disarmable, Unpicklable):
    """`module.forward` running the class's forward with some module-level names of its
    real code replaced (a method bound to `module`, kept as an attribute)."""

    def __init__(self, function: Callable, module: torch.nn.Module):
        self.function = function
        self.module = module
        self.__wrapped__ = function
        self.__name__ = getattr(function, "__name__", "forward")

    def __call__(self, *args, **kwargs):
        if not self.armed:
            return type(self.module).forward(self.module, *args, **kwargs)
        return self.function(self.module, *args, **kwargs)

    @property
    def __signature__(self):
        return inspect.signature(types.MethodType(self.function, self.module))


_REBOUND: Dict[Any, Tuple[Callable, tuple]] = {}


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


def rebound_namespace(module: torch.nn.Module) -> Dict[str, Any]:
    """The globals the (patched) real forward of `module` runs with."""
    forward = vars(module).get("forward")
    function = forward.function if isinstance(forward, ReboundForward) else type(module).forward
    return inspect.unwrap(function).__globals__


def bind_forward_with_globals(record: PatchRecord, module: torch.nn.Module, replacements: Dict[str, Any]) -> None:
    """Make `module` (one instance) run its class's forward with some globals of its
    real (undecorated) code replaced; the decorators around it still run."""
    function = type(module).forward
    if not isinstance(function, types.FunctionType):
        raise TypeError(f"{type(module).__name__}.forward is not a plain function; cannot rebind it")
    rebound = rebind_through_decorators(function, lambda real: rebind_globals(real, replacements))
    record.set_attr(module, "forward", ReboundForward(rebound, module))
