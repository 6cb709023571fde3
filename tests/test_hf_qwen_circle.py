"""Circle-RoPE + AGE on tiny random Qwen2.5-VL, Qwen3-VL and (where the release has it)
Qwen3.5 dense and MoE models, images and videos (Qwen3-VL / Qwen3.5: timestamp text
between frames; Qwen3.5: AGE over the full-attention layers only), through
c2rope.patch_model.

Reference: the unpatched model given the Circle-RoPE positions of
c2rope.mrope.mrope_position_ids explicitly (Qwen3-VL videos as one grid per frame,
written out here), with the layers AGE leaves on M-RoPE handed the cos/sin of
transformers' own get_rope_index positions."""
import random

import pytest
import torch

import c2rope
from c2rope.circle import AGE_STRATEGIES, CircleRoPEConfig
from c2rope.mrope import mrope_position_ids

transformers = pytest.importorskip("transformers")
from qwen_tiny import (HAS_QWEN3_5, IMAGE_ID, MERGE, QWEN3_5_KINDS, SUPPRESS, TIMESTAMPED, VIDEO_ID,  # noqa: E402
                       age_hooks, attention_layers, cache_tolerance, make_model, make_prompt, text_prompt)

KINDS = ("qwen2_5_vl", "qwen3_vl") + (QWEN3_5_KINDS if HAS_QWEN3_5 else ())


def _frames(video_grid_thw):
    """One (1, h, w) row per frame."""
    rows = [(1, h, w) for t, h, w in video_grid_thw.tolist() for _ in range(t)]
    return torch.tensor(rows)


def reference_logits(model, inputs, config):
    inner, text = model.model, model.model.language_model
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    types = (ids == IMAGE_ID).long() + 2 * (ids == VIDEO_ID).long()
    videos = inputs.get("video_grid_thw")
    extra = {}
    if videos is not None:
        if model.config.model_type in TIMESTAMPED:  # one grid per frame, timestamps between
            videos = _frames(videos)
        else:  # Qwen2.5-VL: frames 1 "second" apart at tokens_per_second=2
            extra = dict(second_per_grid_ts=[1.0] * len(videos), tokens_per_second=2)
    circle, _ = mrope_position_ids(ids, inputs["image_grid_thw"], videos, mask, mm_token_type_ids=types,
                                   spatial_merge_size=MERGE, circle=config, **extra)
    handles = []
    plan = config.layer_plan(len(attention_layers(text)))
    if not all(plan):
        arguments = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw") if k in inputs}
        if "mm_token_type_ids" in inputs:
            arguments["mm_token_type_ids"] = inputs["mm_token_type_ids"]
        mrope, _ = inner.get_rope_index(ids, attention_mask=mask, **arguments)
        handles = age_hooks(text, plan, mrope)
    try:
        with torch.no_grad():
            return model(**inputs, position_ids=circle).logits
    finally:
        for handle in handles:
            handle.remove()
        inner.rope_deltas = None


def _valid_rows(logits, inputs):
    return logits[inputs["attention_mask"].bool()]


@pytest.mark.parametrize("strategy", AGE_STRATEGIES)
@pytest.mark.parametrize("kind", KINDS)
def test_prefill_matches_reference(kind, strategy):
    model = make_model(kind)
    config = CircleRoPEConfig(alpha=random.random(), radius=random.choice([10.0, "auto-1.5"]), age_strategy=strategy)
    inputs, _ = make_prompt(kind)
    want = reference_logits(model, inputs, config)
    with torch.no_grad():
        plain = model(**inputs).logits
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid_rows(got, inputs), _valid_rows(want, inputs), rtol=1e-9, atol=1e-9)
    if any(config.layer_plan(len(attention_layers(model.model.language_model)))):
        assert (_valid_rows(got, inputs) - _valid_rows(plain, inputs)).abs().max() > 1e-4
    # else AGE leaves every attention layer on M-RoPE (Qwen3.5's one full-attention
    # layer under "alternate"): nothing changes, and the reference says so.
    c2rope.unpatch_model(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_cached_equals_uncached(kind):
    model = make_model(kind)
    c2rope.patch_model(model, CircleRoPEConfig(age_strategy=random.choice(["all", "alternate"])))
    inputs, _ = make_prompt(kind, batch=3)
    runs = [model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=use_cache,
                           return_dict_in_generate=True, output_logits=True, suppress_tokens=SUPPRESS)
            for use_cache in (True, False)]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for cached, uncached in zip(runs[0].logits, runs[1].logits):
        # float32 logits from generate(): 1.4e-6 measured on 5.0.0 (C2ROPE_TEST_SEED=6), also
        # before the Qwen multi-turn work; a wrong position is off by O(1).
        torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=max(1e-5, cache_tolerance(kind)))


@pytest.mark.parametrize("kind", KINDS)
def test_text_only_logits_unchanged(kind):
    model = make_model(kind)
    ids, mask = text_prompt()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    c2rope.patch_model(model, CircleRoPEConfig(age_strategy=random.choice(AGE_STRATEGIES)))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        model(**make_prompt(kind)[0])  # an image prompt in between changes nothing for text
        again = model(input_ids=ids, attention_mask=mask).logits
    # Text tokens sit at (p, p, p) on the model's own rotary: bit for bit.
    assert torch.equal(got, want) and torch.equal(again, want)


def test_training_backward():
    kind = random.choice(KINDS)
    model = make_model(kind)
    inputs, _ = make_prompt(kind)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    c2rope.patch_model(model, CircleRoPEConfig(age_strategy="alternate"))
    model.train()
    model(**inputs, labels=labels).loss.backward()
    for layer in model.model.language_model.layers:
        grad = layer.self_attn.q_proj.weight.grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
