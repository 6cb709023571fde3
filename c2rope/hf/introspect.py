"""What the installed transformers release exposes, read from the objects themselves.

A patch library must not depend on one release's source text. Everything c2rope needs
to know about a model's code is read here, through what every release exposes:
- the real code of a decorated method (`inspect.unwrap` follows `__wrapped__`, which
  transformers' `deprecate_kwarg`, `can_return_tuple`, `check_model_inputs` & co set);
- the module-level names that code really looks up (`co_names` of the unwrapped code,
  resolved in its `__globals__`);
- argument names from signatures (`past_key_values` became `cache` in 5.24; the decoder
  takes `cache_position` up to 5.23 only);
- the cache's own API (`get_seq_length`, `get_mask_sizes` with a cache_position tensor
  (4.57 - 5.x) or a query length (5.24+)).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import types
from typing import Any, Callable, Optional, Tuple

import torch

# The transformers releases c2rope is tested against (README "Supported releases").
SUPPORTED_RANGE = "4.37.x (original LLaVA), 4.57.x, and 5.0.0 or newer"
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value")


def transformers_version() -> Tuple[int, int, int]:
    import transformers

    parts = re.findall(r"\d+", transformers.__version__)[:3]
    return tuple(int(p) for p in parts + ["0"] * (3 - len(parts)))


def transformers_line() -> str:
    """'legacy' (4.37: rotary inside every attention layer) or 'modern' (4.57 and 5.x:
    one rotary module per decoder); ImportError naming the release otherwise."""
    import transformers

    major, minor, _ = transformers_version()
    if (major, minor) == (4, 37):
        return "legacy"
    if major >= 5 or (major, minor) == (4, 57):
        return "modern"
    raise ImportError(
        f"c2rope.hf supports transformers {SUPPORTED_RANGE}; found {transformers.__version__}. "
        "Install a supported release (pip install 'transformers>=5') or use c2rope's kernels "
        "(c2rope.C2RotaryEmbedding, c2rope.apply_rotary_pos_emb) directly."
    )


def missing_release(model_type: str, family: str, docs: str) -> Optional[str]:
    """Why the installed transformers cannot build `family`, or None when it ships
    transformers.models.<model_type>. A family added in a later release than c2rope's
    oldest supported one is refused with this (from config.json too, before anything is
    built); `docs` names where the family is described."""
    if importlib.util.find_spec(f"transformers.models.{model_type}") is not None:
        return None
    import transformers

    return (f"{family} (model_type {model_type!r}) needs a transformers release that ships "
            f"transformers.models.{model_type}; transformers {transformers.__version__} does not ({docs})")


def require_release(model_type: str, family: str, docs: str) -> None:
    """TypeError naming the release unless it ships the family (missing_release)."""
    reason = missing_release(model_type, family, docs)
    if reason is not None:
        raise TypeError(f"c2rope: {reason}")


def real_function(method: Callable) -> Callable:
    """The function whose code runs, below every decorator (and a bound method's self)."""
    function = getattr(method, "__func__", method)
    return inspect.unwrap(function)


def uses_global(method: Callable, name: str) -> bool:
    """Whether the real code of `method` looks up the module-level `name`."""
    function = real_function(method)
    code = getattr(function, "__code__", None)
    return code is not None and name in code.co_names and name in getattr(function, "__globals__", {})


def parameter_names(function: Callable):
    """Names of the parameters that can be passed positionally, in order."""
    return [
        name for name, p in inspect.signature(function).parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def cache_argument(function: Callable) -> Optional[str]:
    """The name under which `function` (a decoder forward) takes its KV cache."""
    parameters = inspect.signature(function).parameters
    return next((name for name in CACHE_ARGUMENTS if name in parameters), None)


def output_cache(output: Any):
    """The KV cache a decoder returned: ModelOutput `.cache` (5.24+) / `.past_key_values`,
    or the second element of a tuple output (4.37 with return_dict=False)."""
    if isinstance(output, tuple):
        return output[1] if len(output) > 1 and not isinstance(output[1], torch.Tensor) else None
    # Only the fields the output class declares: 5.24+ keeps `past_key_values` as a
    # deprecated alias of `cache` that warns on every read.
    declared = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else None
    for name in CACHE_ARGUMENTS[:2]:
        if declared is not None and name not in declared:
            continue
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def past_length(cache) -> int:
    """Tokens already in a KV cache: transformers Cache objects or legacy tuples."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and len(cache) and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    return 0


def mask_sizes(cache, past: int, q_len: int, device) -> Tuple[int, int]:
    """(kv_len, kv_offset) of the keys the attention of the next call will see."""
    get = getattr(cache, "get_mask_sizes", None)
    if cache is None or get is None:
        return past + q_len, 0
    first = next(iter(inspect.signature(get).parameters.values()), None)
    layer = {"layer_idx": 0} if "layer_idx" in inspect.signature(get).parameters else {}
    if first is not None and first.name == "cache_position":
        return tuple(int(v) for v in get(torch.arange(past, past + q_len, device=device), **layer))
    return tuple(int(v) for v in get(q_len, **layer))


def rebind_through_decorators(method: Callable, replace: Callable[[Callable], Callable]) -> Callable:
    """`method`'s function with its innermost (real) function replaced by
    `replace(real)`, and every decorator above it rebuilt around the replacement.

    Decorators made with functools.wraps keep the function they wrap in a closure cell;
    each is copied with that cell pointing at the rebuilt inner function, so the
    decorators still run (e.g. `deprecate_kwarg` still renames old argument names).
    TypeError when a decorator holds its function some other way."""
    chain = []
    function = getattr(method, "__func__", method)
    while hasattr(function, "__wrapped__"):
        chain.append(function)
        function = function.__wrapped__
    rebuilt = replace(function)
    inner = function
    for wrapper in reversed(chain):
        rebuilt = _copy_with_cell(wrapper, inner, rebuilt)
        inner = wrapper
    return rebuilt


def _copy_with_cell(wrapper: Callable, old: Callable, new: Callable) -> Callable:
    cells = wrapper.__closure__ or ()
    if not isinstance(wrapper, types.FunctionType) or not any(c.cell_contents is old for c in cells if _filled(c)):
        raise TypeError(
            f"c2rope: cannot see through the decorator {getattr(wrapper, '__qualname__', wrapper)!r} "
            "(it does not keep the function it wraps in a closure)"
        )
    closure = tuple(types.CellType(new) if _filled(c) and c.cell_contents is old else c for c in cells)
    copy = types.FunctionType(wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__, closure)
    copy.__kwdefaults__ = wrapper.__kwdefaults__
    copy.__dict__.update(wrapper.__dict__)
    copy.__wrapped__ = new
    copy.__qualname__ = wrapper.__qualname__
    return copy


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True
