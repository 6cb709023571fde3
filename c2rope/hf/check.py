"""`python -m c2rope check MODEL`: does c2rope support this model on this transformers?

MODEL is a local model folder (its config.json is read; no weights are loaded) or a
config.json file. The architecture is built from the config shrunk to 2 layers and small
widths, with random weights (nothing is downloaded), patched, and these are
checked against the unpatched copy:
  1. text-only logits are equal (the patch is exactly the model's RoPE on text);
  2. with an image, the logits of the image rows and after them change;
  3. greedy tokens with and without the KV cache are the same;
  4. a packed row of two samples (position_ids restarting) gives each sample's logits alone.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import List, Optional

import torch

SMALL_TEXT = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
SMALL_VISION = dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2)
VOCAB = 512


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str


def load_config(path: str):
    import transformers

    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL must be a local model folder with a config.json, or a config.json file: "
                                f"{path!r} does not exist")
    with open(path) as handle:
        fields = json.load(handle)
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path}: config.json has no model_type")
    config = transformers.AutoConfig.for_model(model_type, **fields)
    config.architectures = fields.get("architectures")
    return config


def shrink(config):
    """The same architecture at test size: 2 layers, small widths, small vocabulary."""
    config = copy.deepcopy(config)
    text = getattr(config, "text_config", None) or config
    for name, value in SMALL_TEXT.items():
        setattr(text, name, value)
    text.vocab_size = VOCAB
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value >= VOCAB:
            setattr(text, name, None)
    vision = getattr(config, "vision_config", None)
    if vision is not None:
        for name, value in SMALL_VISION.items():
            if hasattr(vision, name):
                setattr(vision, name, value)
        # keep the patch grid (image_size / patch_size) but project into the small text width
        if hasattr(config, "projector_hidden_act") and hasattr(vision, "projection_dim"):
            vision.projection_dim = SMALL_VISION["hidden_size"]
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= VOCAB:
            setattr(config, name, VOCAB - 1)
    return config


def build(config):
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls(config).eval()
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _inputs(model, image_token_id, grid, seq_text=6):
    """(kwargs with an image, kwargs text only, image rows)."""
    config = model.config
    h, w = grid
    generator = torch.Generator().manual_seed(0)
    vocab = VOCAB - 2
    before = torch.randint(3, vocab, (1, seq_text), generator=generator)
    after = torch.randint(3, vocab, (1, seq_text), generator=generator)
    text_ids = torch.cat([before, after], dim=1)
    tokens, pixels = h * w, None
    if getattr(config, "image_grid_pinpoints", None) is not None:  # anyres: LLaVA-NeXT / OneVision
        from .llava_next import check_image

        tokens, pixels = check_image(model, generator)
    image_ids = torch.cat([before, torch.full((1, tokens), image_token_id), after], dim=1)
    with_image = {"input_ids": image_ids, "attention_mask": torch.ones_like(image_ids)}
    vision = getattr(config, "vision_config", None)
    if pixels is not None:
        with_image.update(pixels)
    elif vision is not None:
        size = vision.image_size
        with_image["pixel_values"] = torch.randn(1, getattr(vision, "num_channels", 3), size, size,
                                                 generator=generator)
    text = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    return with_image, text, slice(seq_text, seq_text + tokens + seq_text)


def run_check(path: str, config_override=None, options=None) -> List[CheckResult]:
    import c2rope

    from .qwen_check import is_qwen_vl, run_qwen_check

    config = load_config(path)
    if is_qwen_vl(config):  # grids, pixels and videos: c2rope/hf/qwen_check.py
        return run_qwen_check(config, config_override, options)
    config = shrink(config)
    torch.manual_seed(0)
    model = build(config)
    reference = copy.deepcopy(model)
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(config, "image_token_index", None)
    decoder_only = image_token_id is None
    if decoder_only:
        image_token_id = VOCAB - 1
    grid = (2, 3) if decoder_only else None
    c2rope.patch_model(model, config_override, image_token_id=image_token_id, grid=grid, options=options)
    state = vars(model)["_c2rope_record"].state
    with_image, text, image_rows = _inputs(model, image_token_id, tuple(state.grid))
    results = []
    with torch.no_grad():
        got, expected = model(**text).logits, reference(**text).logits
        diff = (got - expected).abs().max().item()
        results.append(CheckResult("text-only logits equal the unpatched model's", diff <= 1e-5,
                                   f"max |diff| = {diff:.2e}"))
        got, expected = model(**with_image).logits, reference(**with_image).logits
        diff = (got[:, image_rows] - expected[:, image_rows]).abs().max().item()
        results.append(CheckResult("image rows change", diff > 1e-4, f"max |diff| = {diff:.2e}"))
        generate = dict(with_image, max_new_tokens=4, do_sample=False, pad_token_id=0,
                        suppress_tokens=[image_token_id])
        cached = model.generate(**generate, use_cache=True)
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


def main(path: str, config_override: Optional[object] = None, options: Optional[dict] = None) -> int:
    """options: patch_model's options (the Qwen-VL family: frequencies, frame_axis)."""
    import transformers

    from .qwen_check import is_qwen_vl, split_line

    try:
        config = load_config(path)
    except (OSError, ValueError) as exc:
        print(f"c2rope check: {exc}")
        return 2
    print(f"c2rope check: {config.model_type} ({', '.join(config.architectures or ['?'])}), "
          f"transformers {transformers.__version__}, built at 2 layers with random weights")
    try:
        if is_qwen_vl(config):
            print(f"  {split_line(config, config_override, options)}")
        results = run_check(path, config_override, options)
    except (TypeError, ValueError, ImportError, RuntimeError, NotImplementedError) as exc:
        print(f"NOT SUPPORTED: {type(exc).__name__}: {exc}")
        return 2
    for result in results:
        print(f"  {'PASS' if result.passed else 'FAIL'}  {result.name} ({result.detail})")
    ok = all(r.passed for r in results)
    print("supported" if ok else "NOT SUPPORTED: a check failed")
    return 0 if ok else 1
