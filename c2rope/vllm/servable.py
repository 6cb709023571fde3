"""What the vLLM plugin can serve exactly, decided from a checkpoint's recorded c2rope
entry alone (no vLLM import: the main lane tests it too).

Every serving class calls `check_servable(hf_config)` first in its `__init__`, so a
checkpoint that cannot be served exactly is refused before anything is built.
"""
from __future__ import annotations

from ..serving import KEY, parse_entry


# The attention backend whose layers `chebyshev.py` knows how to give the Chebyshev mask.
MASK_BACKENDS = ("CPU_ATTN",)
# The C2RoPEConfig.mask values served (the Chebyshev ones through chebyshev.py): every
# serving class passes them to check_servable.
MASKS = ("causal", "outward", "inward")


def check_servable(hf_config, masks=("causal",)) -> dict:
    """The recorded {"config", "options"}, or ValueError saying why this checkpoint cannot
    be served exactly. `masks`: the C2RoPEConfig.mask values the calling family serves
    (a family without `chebyshev.py` wired in serves "causal" only)."""
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
    if config.mask not in masks:
        raise ValueError(
            f"c2rope.vllm: this checkpoint was trained with C2RoPEConfig(mask={config.mask!r}), the Chebyshev "
            "image mask, which the plugin does not serve for this family (vLLM's attention takes only the "
            "causal mask unless told otherwise), and serving it causally would give other outputs than the model "
            "was trained for. Serve it with transformers' generate (c2rope.patch_model), or fine-tune with "
            "C2RoPEConfig(mask='causal')")
    if config.text_spatial != "temporal":
        raise ValueError(
            f"c2rope.vllm: C2RoPEConfig(text_spatial={config.text_spatial!r}) puts text at (m, 0, 0), but vLLM "
            "decodes every generated token at (p, p, p) on all position rows; only text_spatial='temporal' is "
            "served")
    if options.get("frame_axis", "temporal") not in ("temporal", "separate"):
        raise ValueError(f"c2rope.vllm: unknown options['frame_axis']={options['frame_axis']!r}")
    if options.get("frequencies", "model") not in ("model", "c2rope"):
        raise ValueError(f"c2rope.vllm: unknown options['frequencies']={options['frequencies']!r}")
    return recorded


def _trained_with(mask: str) -> str:
    """How a message names the image rule: a C2RoPEConfig.mask, or "block" (Gemma 3's / Gemma 4's
    own bidirectional image block, which their patch keeps: c2rope/vllm/gemma3.py, gemma4.py)."""
    if mask == "block":
        return ("a Gemma checkpoint whose image tokens see their whole image (Gemma 3's bidirectional image block, "
                "Gemma 4's on its sliding layers, which C2RoPEConfig(mask='causal') and "
                "image_attention='bidirectional' keep)")
    return f"C2RoPEConfig(mask={mask!r}), the Chebyshev image mask"


# The image rules c2rope's Gemma 3 / 4 patches take (options={"image_attention": ...}, docs/gemma.md):
# c2rope/hf/families/gemma IMAGE_ATTENTION, which imports transformers (tests/test_serving_config.py
# checks that the two agree).
IMAGE_ATTENTION = ("chebyshev", "bidirectional")


def recorded_image_attention(recorded, family: str) -> str:
    """The recorded `image_attention` option of a Gemma 3 / 4 patch ("chebyshev" when not
    recorded), or ValueError for any other option or value."""
    options = dict(recorded["options"])
    attention = options.pop("image_attention", "chebyshev")
    if options:
        raise ValueError(f"c2rope.vllm: {family} takes the option 'image_attention' only, the checkpoint records "
                         f"{sorted(options)}")
    if attention not in IMAGE_ATTENTION:
        raise ValueError(f"c2rope.vllm: options['image_attention'] must be one of {IMAGE_ATTENTION}, got "
                         f"{attention!r}")
    return attention


def check_mask_backend(mask: str, backend: str) -> None:
    """ValueError unless the Chebyshev mask `mask` can be applied on attention backend
    `backend` (vLLM's name for it, e.g. "CPU_ATTN", "FLASH_ATTN")."""
    if mask == "causal" or backend in MASK_BACKENDS:
        return
    raise ValueError(
        f"c2rope.vllm: this checkpoint was trained with {_trained_with(mask)}; "
        f"the plugin applies it on vLLM's {' / '.join(MASK_BACKENDS)} attention backend only, and this engine's "
        f"attention backend is {backend}. vLLM's GPU backends take a bidirectional image block (is_mm_prefix_lm), "
        "not a ring mask, and serving the model causally would give other outputs than it was trained for "
        "(docs/serving.md, 'The Chebyshev mask on vLLM'). Serve it on vLLM's CPU backend, with transformers' "
        "generate (c2rope.patch_model), or fine-tune with C2RoPEConfig(mask='causal')")


def check_mask_scheduler(mask: str, scheduler_config) -> None:
    """ValueError if vLLM's scheduler (its SchedulerConfig) may split an image over two
    steps: a Chebyshev row sees later tokens of its image, whose keys must exist."""
    if mask == "causal" or not getattr(scheduler_config, "enable_chunked_prefill", False) \
            or getattr(scheduler_config, "disable_chunked_mm_input", False):
        return
    raise ValueError(
        f"c2rope.vllm: this checkpoint was trained with {_trained_with(mask)}, under "
        "which an image token sees tokens of its image that come after it; with chunked prefill vLLM may compute "
        "part of an image in one step and the rest in the next. Pass disable_chunked_mm_input=True (vllm serve "
        "--disable-chunked-mm-input), or enable_chunked_prefill=False")


__all__ = ["IMAGE_ATTENTION", "MASKS", "MASK_BACKENDS", "check_mask_backend", "check_mask_scheduler", "check_servable", "recorded_image_attention"]
