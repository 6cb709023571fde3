"""The families wing of c2rope.hf: one module (or sub-package) per model family, each
holding what is particular to that family (how to find its parts, what it refuses, its
probe, its `python -m c2rope check` inputs), on top of the corridor every patch goes
through (pipeline, masks, state, record, context, introspect, packing, registry).

`FAMILIES` below is the one table of families: adding a family is one new module here
plus one line in it (docs/code.md, "Adding a model family"). A family module provides

- `MODEL_TYPES`: the `config.model_type` values it handles, its patcher registered for
  them with `c2rope.hf.registry.register_patcher(*MODEL_TYPES, ...)` at import;
- `DOCS`: its documentation page;
- optional `require_release(model_type)`: TypeError naming the release when the installed
  transformers lacks the family;
- optional, for `python -m c2rope check` (c2rope/cli/check_model.py): `CHECK_CLASSES`,
  `shrink_config`, `check_lines`, `check_inputs`, `check_uncached_tokens`, `run_check`.

The README's family table is generated from this table and the modules' attributes
(`python -m c2rope families --markdown`; tests/test_hf_families.py keeps them equal).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, List, Optional, Tuple

LINES = ("modern", "legacy")  # c2rope.hf.introspect.transformers_line()


@dataclass(frozen=True)
class Family:
    """One row of the families table."""

    module: str  # relative to c2rope.hf.families (".qwen_vl"), or an absolute module name
    name: str  # the display name (README)
    releases: str  # the transformers releases it is tested on (README)
    line: str = "modern"  # the transformers line that loads it: "modern" (4.57, 5.x) or "legacy" (4.37)

    def __post_init__(self):
        for field_name in ("module", "name", "releases"):
            if not isinstance(getattr(self, field_name), str) or not getattr(self, field_name):
                raise ValueError(f"Family.{field_name} must be a non-empty string, got {getattr(self, field_name)!r}")
        if self.line not in LINES:
            raise ValueError(f"Family.line must be one of {LINES}, got {self.line!r}")

    @property
    def module_name(self) -> str:
        return importlib.util.resolve_name(self.module, __name__)


_ALL_LINES = "4.57.6, 5.0.0, 5.24.0, 5.25.0"
FAMILIES: List[Family] = [
    Family(".llama", "Llama, Mistral, Qwen2", _ALL_LINES),
    Family(".llava", "LLaVA", _ALL_LINES),
    Family(".llava_next", "LLaVA-NeXT, LLaVA-OneVision (anyres)", _ALL_LINES),
    Family(".qwen_vl", "Qwen2-VL, Qwen2.5-VL, Qwen3-VL", _ALL_LINES),
    Family(".qwen3_5", "Qwen3.5 dense and MoE", "5.24.0, 5.25.0 (not in 4.57.6, 5.0.0)"),
    Family(".gemma", "Gemma 3, Gemma 4", "Gemma 3: 5.0.0, 5.24.0, 5.25.0; Gemma 4: 5.24.0, 5.25.0 (both refused on 4.57.6)"),
    Family(".idefics3", "Idefics3, SmolVLM / SmolVLM2 (tiles)", _ALL_LINES),
    Family(".internvl", "InternVL (tiles)", _ALL_LINES),
    Family(".llava_onevision1_5", "LLaVA-OneVision-1.5", "5.25.0 (not in 4.57.6, 5.0.0, 5.24.0)"),
    Family(".legacy", "Llama, original LLaVA (llava-torch 1.2.2.post1)", "4.37.2", line="legacy"),
]

_loaded: Dict[str, Tuple[Family, ModuleType]] = {}  # module name -> (row, module), this process's line
_line: Optional[str] = None  # the line loaded, once load_families ran


def load_families(line: str) -> None:
    """Import every family module of `line` (each registers its patchers); once."""
    global _line
    if _line is not None:
        return
    _line = line
    for family in FAMILIES:
        if family.line == line:
            _import(family)


def _import(family: Family) -> ModuleType:
    module = importlib.import_module(family.module_name)
    types = getattr(module, "MODEL_TYPES", None)
    if not isinstance(types, tuple) or not types or not all(isinstance(t, str) and t for t in types):
        raise TypeError(f"family module {family.module_name} must define MODEL_TYPES, a non-empty tuple of "
                        f"config.model_type strings, got {types!r}")
    _loaded[family.module_name] = (family, module)
    return module


def register_family(family: Family) -> None:
    """Add a row to the table (a family from outside c2rope: `module` an absolute name).
    Its module is imported (and its patchers registered) now if the families of its line
    are already loaded, else with them. ValueError if a row names the same module."""
    if not isinstance(family, Family):
        raise TypeError(f"family must be a c2rope.hf.families.Family, got {type(family).__name__}")
    if any(row.module_name == family.module_name for row in FAMILIES):
        raise ValueError(f"a family with module {family.module_name!r} is already registered")
    FAMILIES.append(family)
    if _line == family.line:
        try:
            _import(family)
        except BaseException:
            FAMILIES.remove(family)
            raise


def loaded_families() -> List[Tuple[Family, ModuleType]]:
    """(row, module) of every family this process loaded, in table order."""
    return [_loaded[row.module_name] for row in FAMILIES if row.module_name in _loaded]


def family_of(model_type: str) -> Optional[ModuleType]:
    """The loaded family module whose MODEL_TYPES holds `model_type` (None if none does:
    a patcher registered with register_patcher alone)."""
    for _, module in loaded_families():
        if model_type in module.MODEL_TYPES:
            return module
    return None


__all__ = ["FAMILIES", "Family", "family_of", "load_families", "loaded_families", "register_family"]
