"""HuggingFace Transformers integration: `patch_model` / `unpatch_model`.

    import c2rope
    c2rope.patch_model(model, c2rope.C2RoPEConfig())   # one line in a training script
    ...
    c2rope.unpatch_model(model)                          # the model is exactly as before

Patching is per model instance: attributes of the model's own modules are swapped
(forward wrappers, the decoder's rotary module, the attention forwards' lookup of
`apply_rotary_pos_emb`), never transformers' module-level functions, so unpatched models
in the same process are unaffected. Supported: transformers 4.37.x with the original
LLaVA code (legacy.py), 4.57.x and every 5.x (modern.py), read from the model's own code
through `introspect.py`. docs/hf.md has the user-facing details.

Adding a model family (the registry interface)
-----------------------------------------------
Write a module c2rope/hf/<family>.py with

    from .registry import register_patcher

    @register_patcher("my_model_type", ...)        # values of model.config.model_type
    def _patch(model, record, state):
        # model:  the (PEFT-unwrapped) transformers model being patched
        # record: c2rope.hf.record.PatchRecord -- make EVERY change through it:
        #         record.set_attr(obj, name, value), record.wrap_forward(module, handler, *context),
        #         record.add_hooks(module, pre_hook, post_hook) (entry.py: prefer hooks on modules
        #         that trainers may wrap),
        #         c2rope.hf.record.bind_forward_with_globals(record, module, {name: fn})
        #         so unpatch_model can undo it exactly; set record.probe = (decoder,
        #         attention layers), or a callable probe(state) that raises RuntimeError,
        #         to have patch_model verify the patch with a probe forward
        # state:  c2rope.hf.state.C2RoPEState -- .config (C2RoPEConfig), .image_token_id,
        #         .grid (fill in defaults from model.config when None)
        ...

and add its name to `_FAMILY_MODULES` below (one line). A patcher may raise
TypeError/ValueError for a model it cannot handle; patch_model then undoes whatever the
patcher already changed. modern.patch_decoder is reusable for any decoder whose layers call
`apply_rotary_pos_emb` and whose inner model has `rotary_emb` and `layers`.
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence, Tuple, Union

import torch

from ..circle import CircleRoPEConfig
from ..config import C2RoPEConfig
from .introspect import SUPPORTED_RANGE, transformers_line
from .record import PatchRecord
from .registry import check_config, check_options, default_config, get_patcher, register_patcher, supported_model_types
from .state import C2RoPEState
from .verify import verify

__all__ = [
    "patch_model",
    "unpatch_model",
    "verify",
    "C2RoPECallback",
    "is_patched",
    "register_patcher",
    "supported_model_types",
    "PatchRecord",
    "C2RoPEState",
    "SUPPORTED_RANGE",
]

_RECORD_ATTR = "_c2rope_record"


def __getattr__(name):
    if name == "C2RoPECallback":  # imports transformers' trainer machinery: only when asked for
        from .callback import C2RoPECallback

        return C2RoPECallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Model-family modules that register patchers; per transformers line.
_FAMILY_MODULES = {
    "modern": ("modern", "qwen_vl", "llava_next", "families.qwen3_5", "families.internvl",
               "families.llava_onevision1_5"),
    "legacy": ("legacy",),
}
_loaded = False


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    for name in _FAMILY_MODULES[transformers_line()]:
        importlib.import_module(f".{name}", __name__)
    _loaded = True


def _base_model(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_patched(model) -> bool:
    return _RECORD_ATTR in vars(_base_model(model))


def patch_model(
    model,
    config: Union[C2RoPEConfig, CircleRoPEConfig, None] = None,
    image_token_id: Optional[int] = None,
    grid: Union[Tuple[int, int], Sequence[Tuple[int, int]], None] = None,
    verify: bool = True,
    options: Optional[dict] = None,
):
    """Give `model` C2RoPE positions, the fused rotary kernel and the Chebyshev mask.

    config: C2RoPEConfig for Llama-family and LLaVA models, CircleRoPEConfig for
        Qwen2-VL / Qwen2.5-VL (Circle-RoPE + AGE); None takes the family's defaults.
    image_token_id: id of the image placeholder token in input_ids (LLaVA: taken from
        the model config when None; plain decoders: None means images come only from
        `visual_layout=` passed to forward / generate).
    grid: (H, W) patch grid per image, or a list per image (default: from the vision
        config for LLaVA, else (24, 24)).
    verify: run `c2rope.verify` (tiny 8-token probe forwards, no gradients, through every
        entry point: the model, its inner multimodal model, the decoder) that checks every
        attention layer really rotates by c2rope's positions and receives its mask;
        RuntimeError (and the model left unpatched) if not. Skipped with a warning for
        weights on the meta device. Call c2rope.verify(model) again after wrapping the
        model (trainer, PEFT, accelerate).
    options: family-specific settings, e.g. Qwen-VL with a C2RoPEConfig:
        {"frequencies": "model" | "c2rope", "frame_axis": "temporal" | "separate"}
        (docs/qwen.md); TypeError for a family
        that takes none.
    Returns the model (patched in place). Raises TypeError for unsupported models,
    ValueError if it is already patched, ImportError for an unsupported transformers.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config is not None and not isinstance(config, (C2RoPEConfig, CircleRoPEConfig)):
        raise TypeError(
            f"config must be a c2rope.C2RoPEConfig or c2rope.CircleRoPEConfig, got {type(config).__name__}"
        )
    if image_token_id is not None and (isinstance(image_token_id, bool) or not isinstance(image_token_id, int)):
        raise TypeError(f"image_token_id must be an int or None, got {image_token_id!r}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be a bool, got {verify!r}")
    if grid is not None:
        from ..layout import VisualLayout

        VisualLayout._parse_grids(grid)  # validates (ValueError / TypeError)
    _load_families()
    base = _base_model(model)
    if _RECORD_ATTR in vars(base):
        raise ValueError("model is already patched by c2rope; call c2rope.unpatch_model(model) first")
    model_config = getattr(base, "config", None)
    model_type = getattr(model_config, "model_type", None)
    if model_type is None:
        raise TypeError(f"{type(base).__name__} has no config.model_type; is it a transformers model?")
    patcher = get_patcher(model_type)
    if config is None:  # the family's own default: C2RoPEConfig(), or CircleRoPEConfig()
        config = default_config(model_type)
    check_config(model_type, config)
    check_options(model_type, options)
    state = C2RoPEState(config, image_token_id, grid, model_type)
    state.options = dict(options or {})
    record = PatchRecord(base, model_type)
    try:
        patcher(base, record, state)
        if state.grid is None:
            state.grid = (24, 24)
        record.state = state
        record.set_attr(base, _RECORD_ATTR, record)
        if verify and record.probe is not None:
            from .verify import verify as verify_paths

            verify_paths(base, _meta_warns=True)  # every entry point, then the kernel-level probe
    except BaseException:
        record.undo()
        raise
    return model


def unpatch_model(model):
    """Undo `patch_model`: c2rope's hooks removed, every swapped attribute restored.
    Wrappers added on top since (accelerate's autocast forward, TRL's fused LM head) stay
    and keep working; a c2rope layer inside one becomes a pass-through. Returns the model."""
    base = _base_model(model)
    record = vars(base).get(_RECORD_ATTR)
    if record is None:
        raise ValueError("model is not patched by c2rope")
    record.undo()
    return model
