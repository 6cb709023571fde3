"""c2rope: C2RoPE and Circle-RoPE rotary position encodings for vision-language models.

Importing the package loads the compiled kernels (`c2rope._C`, which registers the
torch.ops.c2rope.* ops) and their fake/autograd registrations. The public API (docs/design.md
section 7) is imported lazily on first use, so `import c2rope` stays cheap and does not
import transformers.
"""
import importlib

import torch  # noqa: F401  (must be loaded before the extension that links against it)

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "c2rope's compiled kernels (c2rope._C) are missing or do not match this torch. "
        "Build them with `pip install --no-build-isolation .` (or `-e .`) against the "
        f"torch you use. Original error: {exc}"
    ) from exc

from . import _ops  # noqa: F401,E402  (fake kernels and autograd for the ops)
from .config import C2RoPEConfig  # noqa: E402

# The one place the version is written: pyproject.toml reads it from here (without
# importing the package), so keep it a plain string literal.
__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "VisualLayout": "layout",
    "build_position_ids": "positions",
    "next_temporal_index": "positions",
    "chebyshev_mask": "mask",
    "chebyshev_mask_mod": "mask",
    "chebyshev_block_mask": "mask",
    "C2RotaryEmbedding": "rotary",
    "apply_rotary_pos_emb": "rotary",
    "rotary_cos_sin": "rotary",
    "patch_model": "hf",
    "unpatch_model": "hf",
    "is_patched": "hf",
    "verify": "hf",
    "C2RoPECallback": "hf",
    "record_config": "hf.serving",
    "recorded_config": "serving",
    "CircleRoPEConfig": "circle",
    "circle_position_ids": "circle",
    "per_token_distance": "metrics",
}

__all__ = ["C2RoPEConfig", "__version__", *_LAZY]


# subpackages reachable as attributes right after `import c2rope` (c2rope.hf.is_patched)
_SUBMODULES = ("hf", "reference")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'c2rope' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
