"""Which patcher handles which model family.

A patcher is a function `patcher(model, record, state) -> None` that changes `model`
only through `record` (a `c2rope.hf.record.PatchRecord`, so the change can be undone)
and keeps its per-model runtime data in `state` (a `c2rope.hf.state.C2RoPEState`: the
C2RoPEConfig, image_token_id, grid, the span cache for KV decoding). It is registered
under the `config.model_type` values it handles:

    from c2rope.hf.registry import register_patcher

    @register_patcher("qwen2_vl", "qwen2_5_vl")
    def _patch_qwen2_vl(model, record, state):
        record.set_attr(model.model, "rotary_emb", MyRotary(...))
        record.wrap_forward(model, lambda original: my_wrapper(original, state))

`patch_model` looks the model up by `model.config.model_type`; PEFT wrappers are
unwrapped first. Registering a model type twice raises unless `replace=True`.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from ..config import C2RoPEConfig

_PATCHERS: Dict[str, Callable] = {}
# The config classes each model type's patcher accepts (C2RoPEConfig unless registered
# otherwise: Qwen2-VL takes a CircleRoPEConfig).
_CONFIG_TYPES: Dict[str, Tuple[type, ...]] = {}
# Whether a model type's patcher reads `patch_model(..., options=)` (state.options).
_TAKES_OPTIONS: Dict[str, bool] = {}


def register_patcher(
    *model_types: str, replace: bool = False, config_types: Tuple[type, ...] = (C2RoPEConfig,),
    takes_options: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator: register `patcher` for each of `model_types` (config.model_type), for
    configs that are instances of `config_types`. `takes_options`: the patcher reads
    and checks `state.options` (the dict given to `patch_model(..., options=)`)."""
    if not model_types or not all(isinstance(t, str) and t for t in model_types):
        raise ValueError("register_patcher needs one or more non-empty model_type strings")
    if not config_types or not all(isinstance(t, type) for t in config_types):
        raise ValueError("register_patcher needs config_types: a non-empty tuple of classes")

    def decorator(patcher: Callable) -> Callable:
        if not callable(patcher):
            raise TypeError(f"patcher must be callable, got {type(patcher).__name__}")
        for model_type in model_types:
            if model_type in _PATCHERS and not replace:
                raise ValueError(f"a patcher for model_type {model_type!r} is already registered")
        for model_type in model_types:
            _PATCHERS[model_type] = patcher
            _CONFIG_TYPES[model_type] = tuple(config_types)
            _TAKES_OPTIONS[model_type] = bool(takes_options)
        return patcher

    return decorator


def get_patcher(model_type: str) -> Callable:
    try:
        return _PATCHERS[model_type]
    except KeyError:
        raise TypeError(
            f"c2rope.patch_model does not support model_type {model_type!r}; supported: "
            f"{sorted(_PATCHERS)} (register more with c2rope.hf.registry.register_patcher)"
        ) from None


def default_config(model_type: str):
    """The default config of a model type's patcher: its first accepted class, built
    with no arguments."""
    return _CONFIG_TYPES.get(model_type, (C2RoPEConfig,))[0]()


def config_types(model_type: str) -> Tuple[type, ...]:
    """The config classes a model type's patcher accepts (C2RoPEConfig unless registered
    otherwise)."""
    return _CONFIG_TYPES.get(model_type, (C2RoPEConfig,))


def check_config(model_type: str, config) -> None:
    """TypeError unless `config` is of a kind the model type's patcher accepts."""
    accepted = _CONFIG_TYPES.get(model_type, (C2RoPEConfig,))
    if not isinstance(config, accepted):
        names = " or ".join(f"c2rope.{t.__name__}" for t in accepted)
        raise TypeError(f"model_type {model_type!r} is patched with a {names}, got {type(config).__name__}")


def check_options(model_type: str, options) -> None:
    """TypeError unless `options` is None, or a dict for a patcher that reads options."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
    if options and not _TAKES_OPTIONS.get(model_type, False):
        raise TypeError(f"model_type {model_type!r} takes no options, got {sorted(options)}")


def supported_model_types():
    return sorted(_PATCHERS)
