"""What the vLLM plugin can serve exactly, decided from a checkpoint's recorded c2rope
entry alone (no vLLM import: the main lane tests it too).

Every serving class calls `check_servable(hf_config)` first in its `__init__`, so a
checkpoint that cannot be served exactly is refused before anything is built.
"""
from __future__ import annotations

from ..serving import KEY, parse_entry


def check_servable(hf_config) -> dict:
    """The recorded {"config", "options"}, or ValueError saying why this checkpoint cannot
    be served exactly."""
    from ..config import C2RoPEConfig

    entry = getattr(hf_config, KEY, None)
    if entry is None:
        raise ValueError(
            f"c2rope.vllm: config.json has no {KEY!r} entry; this architecture serves checkpoints saved after "
            "c2rope.record_config(model) (docs/serving.md). Serve an unpatched checkpoint with its own "
            "architecture name")
    recorded = parse_entry(entry)
    config, options = recorded["config"], recorded["options"]
    if not isinstance(config, C2RoPEConfig):
        raise ValueError(
            f"c2rope.vllm: this checkpoint records a {type(config).__name__}; the vLLM plugin serves C2RoPEConfig "
            "only (Circle-RoPE's per-layer AGE alternation has no vLLM counterpart yet); use transformers' "
            "generate with c2rope.patch_model")
    if config.mask != "causal":
        raise ValueError(
            f"c2rope.vllm: this checkpoint was trained with C2RoPEConfig(mask={config.mask!r}), the Chebyshev "
            "image mask; vLLM's attention backends on this install take only the causal mask (the CPU backend "
            "ignores block masks), and serving it causally would give other outputs than the model was trained "
            "for. Serve it with transformers' generate (c2rope.patch_model), or fine-tune with "
            "C2RoPEConfig(mask='causal')")
    if options.get("frame_axis", "temporal") not in ("temporal", "separate"):
        raise ValueError(f"c2rope.vllm: unknown options['frame_axis']={options['frame_axis']!r}")
    if options.get("frequencies", "model") not in ("model", "c2rope"):
        raise ValueError(f"c2rope.vllm: unknown options['frequencies']={options['frequencies']!r}")
    return recorded


__all__ = ["check_servable"]
