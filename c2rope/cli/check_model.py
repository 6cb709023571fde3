"""`python -m c2rope check MODEL`: does c2rope support this model on this transformers?

MODEL is a local model folder (its config.json is read; no weights are loaded) or a
config.json file. The file is validated first (check_input.py: a malformed one is refused
with its reason, exit code 2) and a model type c2rope does not patch is refused from the
file alone. The architecture is then built from the config shrunk to 2 layers and small
widths, in float32 whatever dtype the checkpoint declares, with random weights (nothing
is downloaded), patched, and these are checked against the unpatched copy:
  1. text-only logits are equal (the patch is exactly the model's RoPE on text);
  2. with a synthetic image, the logits of the image rows and after them change;
  3. greedy tokens with and without the KV cache are the same;
  4. a packed row of two samples (position_ids restarting) gives each sample's logits alone.
A model that does not generate (a reward model's LlamaForSequenceClassification) gets 1
and 2 on its scores, and the report says plainly that 3 and 4 are not checked.
Exit codes: 0 supported, 1 a check failed, 2 refused (the file, the options, or the model).

What differs per family comes from the family's module in c2rope/hf/families/ (found by
model_type through the families table), each attribute optional: `CHECK_CLASSES` (the
class to build when config.json names none), `shrink_config(config)` (after the generic
shrink, in place), `check_lines(config, patch_config, options)` (more header lines about
the checkpoint's config), `check_inputs(model, generator)` (the prompt with one image),
`check_uncached_tokens(model, generate_kwargs)` (the greedy tokens without a KV cache,
where the release's generate(use_cache=False) is not the model's: Idefics3 / SmolVLM on
5.0) and `run_check(plan, patch_config, options, say)` (the whole check, in place of the
generic one). A model type with no family module (registered with register_patcher
alone) gets the generic path.
"""
from __future__ import annotations

import copy
import os
import sys
from typing import Callable, List, Optional

import torch

from c2rope.hf.check_input import CheckInputError, config_path, dtype_line, model_config, read_fields

from .check_parts import (SEQ_TEXT, VOCAB, CheckResult, CheckUsageError, NotSupported, Plan, TooLargeToCheck, build,
                          config_image_token_id, image_prompt, surrounding_text)

SMALL_TEXT = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
SMALL_VISION = dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2)
# What the test model may cost, whatever config.json says: parameters and buffers of the
# shrunk model (counted on the meta device before anything is allocated), pixels and
# placeholder tokens of the synthetic inputs. Real checkpoints stay far below.
MAX_ELEMENTS = 32_000_000
MAX_PIXELS = 16_000_000
MAX_IMAGE_TOKENS = 16_384


def supported_model_types() -> List[str]:
    from c2rope.hf import _load_families, supported_model_types as registered

    _load_families()
    return registered()


def _family(model_type: str):
    """The family module that handles `model_type` (None: the generic path)."""
    from c2rope.hf.families import family_of

    supported_model_types()  # loads the families
    return family_of(model_type)


def _check_classes() -> dict:
    """model_type -> the class to build when config.json names none transformers has."""
    from c2rope.hf.families import loaded_families

    supported_model_types()
    classes = {}
    for _, module in loaded_families():
        classes.update(getattr(module, "CHECK_CLASSES", {}))
    return classes


def model_class(config):
    """(class, why): the first class of `architectures` transformers has and that takes
    this config; else the family's class by model_type; else AutoModelForCausalLM's."""
    import transformers

    config_class = type(config)
    for name in config.architectures or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) and \
                issubclass(config_class, getattr(cls, "config_class", None) or ()):
            return cls, "from architectures"
    named = f"config.json names {config.architectures}" if config.architectures else "config.json names no architectures"
    classes = _check_classes()
    if config.model_type in classes:
        return getattr(transformers, classes[config.model_type]), f"from model_type; {named}"
    mapping = transformers.AutoModelForCausalLM._model_mapping
    if config_class in mapping:
        return mapping[config_class], f"from model_type; {named}"
    raise NotSupported(f"no transformers class builds {config.model_type!r} ({named})")


def force_float32(config) -> None:
    """The test model in one dtype: a checkpoint's dtype fields (top level and in each
    sub-config) would make transformers build the towers in float16/bfloat16 beside
    float32 parts, and the mixed model fails patched or not."""
    seen = [config] + [getattr(config, name) for name in getattr(config, "sub_configs", {}) or {}
                       if getattr(config, name, None) is not None]
    for sub in seen:
        for name in ("dtype", "torch_dtype"):
            if name in vars(sub):
                setattr(sub, name, torch.float32)


def _shrink_text(text) -> None:
    for name, value in SMALL_TEXT.items():
        setattr(text, name, value)
    text.vocab_size = VOCAB


def _drop_large_ids(holders) -> None:
    """Special ids at or above the small vocabulary would index past the embeddings."""
    for holder in holders:
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(holder, name, None)
            if isinstance(value, int) and value >= VOCAB:
                setattr(holder, name, None)
            elif isinstance(value, list) and any(v >= VOCAB for v in value):
                setattr(holder, name, [v for v in value if v < VOCAB] or None)


def shrink(config):
    """The same architecture at test size: 2 layers, small widths, small vocabulary; the
    vision tower keeps its patch grid (image_size / patch_size) at one small layer."""
    config = copy.deepcopy(config)
    text = getattr(config, "text_config", None) or config
    _shrink_text(text)
    _drop_large_ids({id(h): h for h in (config, text)}.values())
    vision = getattr(config, "vision_config", None)
    if vision is not None:
        for name, value in SMALL_VISION.items():
            if hasattr(vision, name):
                setattr(vision, name, value)
        # project into the small text width
        if hasattr(config, "projector_hidden_act") and hasattr(vision, "projection_dim"):
            vision.projection_dim = SMALL_VISION["hidden_size"]
    for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= VOCAB:
            setattr(config, name, VOCAB - (2 if name.startswith("video") else 1))
    return config


def _vision_budget(config) -> str:
    """NotSupported when the synthetic image would be too large to build; else its
    description for the report."""
    vision = getattr(config, "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if not isinstance(size, int) or not isinstance(patch, int):
        return ""
    side = size // patch
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    tiles = 1
    if pinpoints:
        height, width = min(pinpoints, key=lambda p: p[0] * p[1])
        tiles += -(-height // size) * -(-width // size)
    pixels = tiles * getattr(vision, "num_channels", 3) * size * size
    if pixels > MAX_PIXELS or tiles * side * side > MAX_IMAGE_TOKENS or side < 1:
        raise TooLargeToCheck(f"the check keeps the vision tower's patch grid, and vision_config.image_size={size}, "
                           f"patch_size={patch}, num_channels={getattr(vision, 'num_channels', 3)}"
                           f"{' and the smallest grid pinpoint' if pinpoints else ''} make a synthetic image of "
                           f"{tiles} tile(s) of {size}x{size} px ({side}x{side} patches each): larger than the "
                           f"check builds (at most {MAX_PIXELS:,} pixel values, {MAX_IMAGE_TOKENS:,} tokens)")
    return f"{size}x{size} px tiles of {side}x{side} patches"


def _elements(cls, config) -> int:
    """Parameters and buffers of `cls(config)`, counted on the meta device (nothing is
    allocated)."""
    try:
        with torch.device("meta"):
            model = cls(config)
    except Exception as exc:  # noqa: BLE001 - what transformers raises on this config is the reason
        raise NotSupported(f"transformers cannot build {cls.__name__} from it: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None
    return sum(t.numel() for t in list(model.parameters()) + list(model.buffers()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _guard_size(cls, config) -> int:
    count = _elements(cls, config)
    if count > MAX_ELEMENTS:
        raise TooLargeToCheck(f"even shrunk to 2 layers the model would hold {count:,} parameter values (the check "
                           f"builds at most {MAX_ELEMENTS:,}); a field of config.json is far larger than any "
                           f"real checkpoint's")
    return count


def check_usage(model_type: str, config_override, options) -> None:
    """CheckUsageError for a patch config or options this model type does not take (a
    model type c2rope does not patch is left to the NOT SUPPORTED verdict)."""
    from c2rope.hf.registry import check_config, check_options

    if model_type not in supported_model_types():  # also registers the families' options
        return
    try:
        if config_override is not None:
            check_config(model_type, config_override)
        check_options(model_type, options)
    except TypeError as exc:
        raise CheckUsageError(str(exc)) from None


def prepare(path: str, config_override=None, options=None) -> Plan:
    """Read and validate config.json, refuse what c2rope does not patch (before building
    anything), shrink it; the Plan carries the report's header lines."""
    import transformers

    path = config_path(path)
    fields = read_fields(path)
    model_type = fields["model_type"]
    supported = supported_model_types()
    header = [f"c2rope check: {path}"]
    if model_type not in supported:
        raise NotSupported(f"model_type {model_type!r} is not one c2rope patches (supported: {', '.join(supported)}); "
                           f"refused from config.json alone, nothing was built")
    family = _family(model_type)
    if callable(getattr(family, "require_release", None)):  # a release without the family
        try:
            family.require_release(model_type)
        except TypeError as exc:
            raise NotSupported(f"{exc}; refused from config.json alone, nothing was built") from None
    config = model_config(fields, path)
    check_usage(model_type, config_override, options)
    cls, reason = model_class(config)
    small = shrink(config)
    if hasattr(family, "shrink_config"):
        family.shrink_config(small)
    force_float32(small)
    # The budget guards the generic synthetic image; a family's own run_check builds its own inputs.
    image = "" if hasattr(family, "run_check") else _vision_budget(small)
    count = _guard_size(cls, small)
    header.append(f"  model: {model_type}, built as {cls.__name__} ({reason}); transformers {transformers.__version__}")
    header.append(f"  {dtype_line(fields)}")
    text = getattr(small, "text_config", None) or small
    vision = getattr(small, "vision_config", None)
    tower = f", a 1-block vision tower ({image})" if image else (", a 1-block vision tower" if vision else "")
    heads, head_dim = text.num_attention_heads, getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    header.append(f"  test model: {text.num_hidden_layers} layers, hidden {text.hidden_size}, {heads} "
                  f"head{'s' if heads != 1 else ''} of {head_dim}{tower}, vocabulary {VOCAB}; random weights, "
                  f"{count / 1e6:.2f} M values")
    if hasattr(family, "check_lines"):
        header.extend(f"  {line}" for line in family.check_lines(config, config_override, options))
    return Plan(path, small, cls, reason, header)


def _inputs(model, image_token_id, grid):
    """(kwargs with an image, kwargs text only, image rows, description of the image):
    one grid of `image_token_id`s, the family's own prompt when its module has
    check_inputs."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    family = _family(config.model_type)
    if hasattr(family, "check_inputs"):
        return family.check_inputs(model, generator)
    h, w = grid
    before, after = surrounding_text(generator)
    tokens, pixels = h * w, None
    vision = getattr(config, "vision_config", None)
    if vision is not None:
        what = (f"synthetic image: {vision.image_size}x{vision.image_size} px, a {h}x{w} patch grid -> {tokens} "
                f"image tokens (id {image_token_id})")
        size = vision.image_size
        pixels = {"pixel_values": torch.randn(1, getattr(vision, "num_channels", 3), size, size,
                                              generator=generator)}
    else:
        what = (f"synthetic image: {tokens} placeholder tokens (id {image_token_id}) read as a {h}x{w} patch grid "
                f"(a text decoder: only positions and mask change)")
    with_image, text, rows = image_prompt(before, after, tokens, image_token_id, pixels)
    return with_image, text, rows, f"{what}, between {SEQ_TEXT} + {SEQ_TEXT} text tokens"


def run_check(plan: Plan, config_override=None, options=None, say: Callable[[str], None] = print) -> List[CheckResult]:
    import c2rope

    family = _family(plan.config.model_type)
    if hasattr(family, "run_check"):  # the family's whole check (Qwen-VL: grids, pixels and videos)
        return family.run_check(plan, config_override, options, say)
    config = plan.config
    model = build(config, plan.model_class)
    reference = copy.deepcopy(model)
    image_token_id = config_image_token_id(config)
    decoder_only = image_token_id is None
    if decoder_only:
        image_token_id = VOCAB - 1
    grid = (2, 3) if decoder_only else None
    c2rope.patch_model(model, config_override, image_token_id=image_token_id, grid=grid, options=options)
    state = vars(model)["_c2rope_record"].state
    with_image, text, image_rows, what = _inputs(model, image_token_id, tuple(state.grid))
    say(f"  {what}")
    results = []
    with torch.no_grad():
        got, expected = model(**text).logits, reference(**text).logits
        diff = (got - expected).abs().max().item()
        results.append(CheckResult("text-only logits equal the unpatched model's", diff <= 1e-5,
                                   f"max |diff| = {diff:.2e}"))
        got, expected = model(**with_image).logits, reference(**with_image).logits
        per_token = got.dim() == 3  # [batch, seq, vocab]; a sequence classifier scores the whole row
        if per_token:
            diff = (got[:, image_rows] - expected[:, image_rows]).abs().max().item()
            results.append(CheckResult("image rows change", diff > 1e-4, f"max |diff| = {diff:.2e}"))
        else:  # the score pools one row: compare the decoder's output at the image rows
            got, expected = (m(**with_image, output_hidden_states=True).hidden_states[-1] for m in (model, reference))
            diff = (got[:, image_rows] - expected[:, image_rows]).abs().max().item()
            results.append(CheckResult("image rows of the decoder's last hidden state change", diff > 1e-4,
                                       f"max |diff| = {diff:.2e}"))
        if not (per_token and model.can_generate()):
            results.append(CheckResult("KV-cache generation and packed rows", None,
                                       f"{type(model).__name__} does not generate; its text-only score and its decoder's image "
                                       f"rows are checked above"))
            return results
        generate = dict(with_image, max_new_tokens=4, do_sample=False, pad_token_id=0,
                        suppress_tokens=[image_token_id])
        cached = model.generate(**generate, use_cache=True)
        if hasattr(family, "check_uncached_tokens"):  # the release's uncached generate drops the images
            uncached = family.check_uncached_tokens(model, generate)
        else:
            uncached = model.generate(**generate, use_cache=False)
        results.append(CheckResult("greedy tokens with and without the KV cache match",
                                   bool(torch.equal(cached, uncached)), f"{cached[0, -4:].tolist()} vs "
                                   f"{uncached[0, -4:].tolist()}"))
        results.append(_packed_check(model, text, with_image))
    return results


def _packed_check(model, text, with_image) -> CheckResult:
    """Two samples (text only, then the one with an image) packed in one row the way
    DataCollatorWithFlattening packs them: position_ids restarting, no attention_mask.
    Each sample's logits must equal those of the sample alone."""
    first, second = text["input_ids"], with_image["input_ids"]
    vision_inputs = {k: v for k, v in with_image.items() if k not in ("input_ids", "attention_mask")}
    position_ids = torch.cat([torch.arange(first.shape[1]), torch.arange(second.shape[1])]).unsqueeze(0)
    packed = model(input_ids=torch.cat([first, second], dim=1), position_ids=position_ids, use_cache=False,
                   **vision_inputs).logits
    alone = (model(**text, use_cache=False).logits, model(**with_image, use_cache=False).logits)
    diff = max((packed[:, :first.shape[1]] - alone[0]).abs().max().item(),
               (packed[:, first.shape[1]:] - alone[1]).abs().max().item())
    return CheckResult("a packed row (text sample + image sample) gives each sample's logits alone", diff <= 1e-5,
                       f"max |diff| = {diff:.2e}")


def _mark(result: CheckResult) -> str:
    return {True: "PASS", False: "FAIL", None: "NOT CHECKED"}[result.passed]


def main(path: str, config_override: Optional[object] = None, options: Optional[dict] = None) -> int:
    """Print the report of `path`; return the exit code (0 supported, 1 a check failed,
    2 refused: a malformed file or a usage error as `c2rope check: error: ...` on stderr,
    a model c2rope does not patch as `NOT SUPPORTED: ...`, one too large for the test
    model as `NOT CHECKED: ...`). options: patch_model's options (the
    Qwen-VL family: frequencies, frame_axis)."""
    try:
        plan = prepare(path, config_override, options)
    except (CheckInputError, CheckUsageError) as exc:
        print(f"c2rope check: error: {exc}", file=sys.stderr)
        return 2
    except NotSupported as exc:
        print(f"c2rope check: {os.fspath(path)}\n{exc.verdict}: {exc}")
        return 2
    for line in plan.lines:
        print(line)
    try:
        results = run_check(plan, config_override, options)
    except (TypeError, ValueError, ImportError, RuntimeError, NotImplementedError) as exc:
        print(f"NOT SUPPORTED: {type(exc).__name__}: {exc}")
        return 2
    for result in results:
        print(f"  {_mark(result)}  {result.name} ({result.detail})")
    ok = all(r.passed is not False for r in results) and any(r.passed for r in results)
    print("supported" if ok else "NOT SUPPORTED: a check failed")
    return 0 if ok else 1


__all__ = ["CheckResult", "CheckUsageError", "NotSupported", "main", "prepare", "run_check", "shrink"]
