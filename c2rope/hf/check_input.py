"""The config.json that `python -m c2rope check` reads: found, parsed and validated here,
before transformers sees it, so that every malformed file is refused with a one-line
reason (CheckInputError, exit code 2) instead of a traceback, and an unsupported model
type is refused from the file alone, before anything is allocated."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

SUB_CONFIGS = ("text_config", "vision_config")
# Integer fields by name: sizes, counts, token ids, layer indexes. A list of ints is
# accepted too (eos_token_id, vision_feature_layer, deepstack_visual_indexes, ...).
_INTEGER_SUFFIXES = ("_size", "_token_id", "_token_index", "_layers", "_heads", "_embeddings", "_length",
                     "_indexes", "_dim")
_INTEGER_PREFIXES = ("num_", "n_")
# Flags whose names end like integer fields (tie_word_embeddings, use_sliding_window, ...).
_FLAG_PREFIXES = ("tie_", "use_", "output_", "return_", "is_", "add_", "do_")
# ... and flags that say so inside the name (Qwen3.5's mtp_use_dedicated_embeddings).
_FLAG_WORDS = {"use", "tie", "enable", "disable"}
_INTEGER_NAMES = {"depth", "in_chans", "in_channels", "sliding_window", "ignore_index", "vision_feature_layer",
                  "pretraining_tp", "tokens_per_second", "embed_dim"}
# Kept at their real values in the test model, so they must be positive.
_POSITIVE = {"image_size", "patch_size", "spatial_merge_size", "temporal_patch_size", "num_position_embeddings",
             "num_channels", "in_channels"}
# Fields that transformers turns into per-item lists while building the config itself
# (layer_types, id2label), before the check can shrink them: a count no model has is
# refused instead of allocated.
_COUNT_LIMITS = {"_layers": 1024, "depth": 1024, "n_layer": 1024, "num_labels": 65536}
# May be negative: -100 (ignore_index), -1/-2 (layer counted from the end), -1 (no pad token).
_SIGNED = ("ignore_index", "vision_feature_layer", "_token_id", "_token_index")


class CheckInputError(ValueError):
    """config.json cannot be read as a model config; the message is the one-line reason."""


def config_path(model: str) -> str:
    """The config.json of `model` (a model folder, or the file itself)."""
    if not isinstance(model, (str, os.PathLike)):
        raise CheckInputError(f"MODEL must be a path, got {type(model).__name__}")
    path = os.fspath(model)
    if os.path.isdir(path):
        candidate = os.path.join(path, "config.json")
        if not os.path.isfile(candidate):
            raise CheckInputError(f"{path}: a folder without config.json (MODEL is a local model folder or a "
                                  f"config.json file)")
        return os.path.abspath(candidate)
    if not os.path.exists(path):
        raise CheckInputError(f"{path}: no such file or folder (MODEL is a local model folder or a config.json file)")
    if not os.path.isfile(path):
        raise CheckInputError(f"{path}: not a regular file")
    return os.path.abspath(path)


def _no_constants(name: str):
    raise CheckInputError(f"{name} is not a JSON number")


def read_fields(path: str) -> Dict[str, object]:
    """config.json's fields, validated (CheckInputError with the reason otherwise)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckInputError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        fields = json.loads(text, parse_constant=_no_constants)
    except CheckInputError as exc:
        raise CheckInputError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise CheckInputError(f"{path}: nested too deeply to be a model config") from None
    if not isinstance(fields, dict):
        raise CheckInputError(f"{path}: config.json must hold a JSON object, got {_kind(fields)}")
    model_type = fields.get("model_type")
    if model_type is None:
        raise CheckInputError(f"{path}: config.json has no model_type")
    if not isinstance(model_type, str) or not model_type:
        raise CheckInputError(f"{path}: model_type must be a non-empty string, got {_kind(model_type)}")
    architectures = fields.get("architectures")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) and a for a in architectures)):
        raise CheckInputError(f"{path}: architectures must be a list of class names, got {_kind(architectures)}")
    try:
        _check_values(fields, "")
        for name in SUB_CONFIGS:
            sub = fields.get(name)
            if sub is not None and not isinstance(sub, dict):
                raise CheckInputError(f"{name} must be a JSON object or null, got {_kind(sub)}")
            if isinstance(sub, dict):
                if sub.get("model_type") is not None and not isinstance(sub["model_type"], str):
                    raise CheckInputError(f"{name}.model_type must be a string, got {_kind(sub['model_type'])}")
                _check_values(sub, f"{name}.")
        _check_pinpoints(fields.get("image_grid_pinpoints"))
    except CheckInputError as exc:
        raise CheckInputError(f"{path}: {exc}") from None
    return fields


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the bool {str(value).lower()}"
    if isinstance(value, (list, dict)):
        return f"a JSON {'list' if isinstance(value, list) else 'object'}"
    return repr(value)


def _is_integer_field(name: str) -> bool:
    if name.startswith(_FLAG_PREFIXES) or _FLAG_WORDS & set(name.split("_")):
        return False
    return name in _INTEGER_NAMES or name.endswith(_INTEGER_SUFFIXES) or name.startswith(_INTEGER_PREFIXES)


def _check_values(fields: dict, prefix: str) -> None:
    for name, value in fields.items():
        if name in ("rope_scaling", "rope_parameters") and value is not None:
            if not isinstance(value, dict):
                raise CheckInputError(f"{prefix}{name} must be a JSON object or null, got {_kind(value)}")
            section = value.get("mrope_section")
            if section is not None:
                _check_integer(f"{prefix}{name}.mrope_section", section, positive=True)
        elif name in ("dtype", "torch_dtype") and value is not None and not isinstance(value, str):
            raise CheckInputError(f"{prefix}{name} must be a string such as \"bfloat16\", got {_kind(value)}")
        elif _is_integer_field(name) and not isinstance(value, dict):
            _check_integer(prefix + name, value, positive=name in _POSITIVE,
                           signed=name.endswith(_SIGNED) or name in _SIGNED)
            limit = next((n for key, n in _COUNT_LIMITS.items() if name == key or name.endswith(key)), None)
            if limit is not None and isinstance(value, int) and value > limit:
                raise CheckInputError(f"{prefix}{name}={value} is more than any model has (the check reads at most "
                                      f"{limit:,})")


def _check_integer(name: str, value, positive: bool = False, signed: bool = False) -> None:
    values: List[object] = value if isinstance(value, list) else [value]
    for item in values:
        if item is None and not isinstance(value, list):
            continue
        if isinstance(item, bool) or not isinstance(item, int):
            what = "NaN" if isinstance(item, float) and math.isnan(item) else _kind(item)
            raise CheckInputError(f"{name} must be an integer, got {what}")
        if positive and item <= 0:
            raise CheckInputError(f"{name} must be positive, got {item}")
        if not signed and item < 0:
            raise CheckInputError(f"{name} must not be negative, got {item}")


def _check_pinpoints(pinpoints) -> None:
    if pinpoints is None:
        return
    if not isinstance(pinpoints, list) or not pinpoints or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                       for v in p) for p in pinpoints):
        raise CheckInputError(f"image_grid_pinpoints must be a non-empty list of [height, width] pairs of "
                              f"positive integers, got {_kind(pinpoints)}")


def declared_dtypes(fields: dict) -> Dict[str, Optional[str]]:
    """The dtype the checkpoint declares, at the top level and in each sub-config
    (newer files write `dtype`, older ones `torch_dtype`); None where not given."""
    found = {"config": fields.get("dtype") or fields.get("torch_dtype")}
    for name in SUB_CONFIGS:
        sub = fields.get(name)
        if isinstance(sub, dict):
            found[name] = sub.get("dtype") or sub.get("torch_dtype")
    return found


def dtype_line(fields: dict) -> str:
    """`dtype:` line of the report: what the checkpoint declares, what the check uses."""
    found = [f"{value} ({'top level' if where == 'config' else where})"
             for where, value in declared_dtypes(fields).items() if value is not None]
    declared = ", ".join(found) if found else "no dtype"
    return (f"dtype: config.json declares {declared}; the check builds and compares in float32 "
            f"(random weights: it tests positions and masks, not precision)")


def model_config(fields: dict, path: str):
    """The transformers config of the validated fields (CheckInputError when
    transformers refuses them)."""
    import transformers

    fields = dict(fields)
    model_type = fields.pop("model_type")
    try:
        config = transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the file is the cause
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckInputError(f"{path}: transformers {transformers.__version__} cannot read it as a "
                              f"{model_type!r} config: {message}") from None
    config.architectures = fields.get("architectures")
    return config


__all__ = ["CheckInputError", "config_path", "declared_dtypes", "dtype_line", "model_config", "read_fields"]
