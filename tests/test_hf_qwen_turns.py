"""Multi-turn on tiny random Qwen-VL models: a second turn with a NEW image (and video)
arrives after the KV cache of the first turn and its answer. With C2RoPE the cached
logits and greedy tokens equal one uncached forward over the whole conversation, which
equals the independent reference (reference positions and mask fed to the unpatched
model). transformers' generate() cannot place new images after a cached prefix, with or
without c2rope: the patched model says so (docs/qwen.md, "Multi-turn")."""
import inspect
import random

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig, CircleRoPEConfig

transformers = pytest.importorskip("transformers")
from qwen_tiny import (ALL_KINDS, IMAGE_ID, KINDS, MERGE, SUPPRESS, cache_tolerance, join_turns,  # noqa: E402
                       make_model, make_prompt)
from test_hf_qwen_c2rope import CONFIGS, reference_logits, video_frames  # noqa: E402

STEPS = 3
BLOCKED = SUPPRESS + [1, 2]  # and bos / eos of the tiny configs: generate() would stop a row at eos


def _cache_name(model):
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _greedy(logits):
    logits = logits.clone()
    logits[:, BLOCKED] = float("-inf")
    return logits.argmax(-1, keepdim=True)


def _append_text(inputs, tokens):
    """`inputs` with text tokens appended to every row."""
    out = dict(inputs, input_ids=torch.cat([inputs["input_ids"], tokens], dim=1),
               attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], dim=1))
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(tokens)], dim=1)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_second_turn_image_cached_equals_whole_conversation(kind):
    model = make_model(kind)
    config = random.choice(CONFIGS)
    options = {"frequencies": random.choice(["model", "c2rope"]), "frame_axis": random.choice(["temporal", "separate"])}
    first, first_spans = make_prompt(kind, batch=2)
    second, second_spans = make_prompt(kind, batch=2)
    c2rope.patch_model(model, config, options=options)
    name = _cache_name(model)
    with torch.no_grad():
        out = model(**first, use_cache=True)
        answer = _greedy(out.logits[:, -1])  # turn 1's answer: one token, decoded with the cache
        mask = torch.cat([first["attention_mask"], torch.ones_like(answer)], dim=1)
        out = model(input_ids=answer, attention_mask=mask, use_cache=True, **{name: _cache(out)})
        mask = torch.cat([mask, second["attention_mask"]], dim=1)
        out = model(**dict(second, attention_mask=mask), use_cache=True, **{name: _cache(out)})
        chunks, tokens = [out.logits], []
        for _ in range(STEPS):
            tokens.append(_greedy(chunks[-1][:, -1]))
            mask = torch.cat([mask, torch.ones_like(tokens[-1])], dim=1)
            out = model(input_ids=tokens[-1], attention_mask=mask, use_cache=True, **{name: _cache(out)})
            chunks.append(out.logits)
    turn_one = _append_text(first, answer)
    conversation = join_turns(turn_one, second)
    whole = _append_text(conversation, torch.cat(tokens, dim=1))
    with torch.no_grad():
        uncached = model(**whole).logits
    start = turn_one["input_ids"].shape[1]
    cached = torch.cat(chunks, dim=1)  # turn 2, then one row per generated token
    valid = whole["attention_mask"][:, start:].bool()
    torch.testing.assert_close(cached[valid], uncached[:, start:][valid], rtol=0, atol=1e-5)
    generated = model.generate(**conversation, max_new_tokens=STEPS, do_sample=False, use_cache=False,
                               suppress_tokens=BLOCKED)
    assert torch.equal(generated[:, -STEPS:], torch.cat(tokens, dim=1))
    shift = start
    spans = [a + [(s + shift, h, w) for s, h, w in b] for a, b in zip(first_spans, second_spans)]
    c2rope.unpatch_model(model)
    videos = [a + [[(s + shift, n) for s, n in frames] for frames in b]
              for a, b in zip(video_frames(first, first_spans), video_frames(second, second_spans))]
    want = reference_logits(model, whole, spans, config, options["frequencies"], options["frame_axis"], videos)
    valid = whole["attention_mask"].bool()
    torch.testing.assert_close(uncached[valid], want[valid], rtol=1e-9, atol=1e-9)


def test_second_turn_text_only_keeps_decoding():
    # A text-only second turn after an image turn: the model's own decoding, same numbers.
    kind = random.choice(KINDS)
    model = make_model(kind)
    config = random.choice(CONFIGS)
    first, _ = make_prompt(kind, batch=2)
    c2rope.patch_model(model, config)
    name = _cache_name(model)
    text = torch.randint(3, 50, (2, 4))
    with torch.no_grad():
        out = model(**first, use_cache=True)
        mask = torch.cat([first["attention_mask"], torch.ones_like(text)], dim=1)
        cached = model(input_ids=text, attention_mask=mask, use_cache=True, **{name: _cache(out)}).logits
        whole = model(**_append_text(first, text)).logits
    torch.testing.assert_close(cached, whole[:, -text.shape[1]:], rtol=0, atol=1e-5)


def _second_turn(kind, one_token_images):
    """A one-row second turn whose images are all one merged token (`one_token_images`)
    or that has an image of more than one token."""
    for _ in range(1000):
        second, _ = make_prompt(kind, batch=1, videos=False)
        tokens = second["image_grid_thw"].prod(-1) // MERGE**2
        if bool((tokens == 1).all()) == one_token_images:
            return second
    raise AssertionError("make_prompt drew no such turn in 1000 tries")


def _two_turns(one_token_images):
    """(patched model, turn 1, turn 2, the cache argument's name, turn 1's cache)."""
    kind = random.choice(KINDS)
    model = make_model(kind)
    first, _ = make_prompt(kind, batch=1, videos=False)
    second = _second_turn(kind, one_token_images)
    c2rope.patch_model(model, C2RoPEConfig())
    with torch.no_grad():
        cache = _cache(model(**first, use_cache=True))
    return model, first, second, _cache_name(model), cache


def test_generate_cannot_add_images_after_a_cache():
    model, first, second, name, cache = _two_turns(one_token_images=False)
    conversation = join_turns(first, second)
    conversation.update(pixel_values=second["pixel_values"], image_grid_thw=second["image_grid_thw"])
    with pytest.raises(ValueError, match="Multi-turn"):
        model.generate(**conversation, max_new_tokens=2, do_sample=False, **{name: cache})
    # The forward itself refuses new image tokens after a cache without their pixels.
    mask = torch.cat([first["attention_mask"], second["attention_mask"]], dim=1)
    arguments = {k: v for k, v in second.items() if k != "pixel_values"}
    with pytest.raises(ValueError, match="no pixel_values"):
        model(**dict(arguments, attention_mask=mask), **{name: cache})


def test_generate_after_a_cache_with_one_token_images_is_refused_or_exact():
    # transformers 5.0's generate() hands a chunk after a cache text positions (its index
    # plus rope_deltas). For an image of one merged token those are its positions (its
    # (x, y) offsets are 0, its m the text index), so c2rope lets the call through: the
    # answer must then equal one uncached forward over the whole conversation. Other
    # releases drop the pixels (4.57) or grid the whole conversation (5.24+): refused.
    model, first, second, name, _ = _two_turns(one_token_images=True)
    whole = join_turns(first, second)
    with torch.no_grad():
        want = model(**whole).logits[:, -1]
        cache = _cache(model(**first, use_cache=True))  # again: the rope_deltas turn 1 leaves, as a user has them
    conversation = dict(whole, pixel_values=second["pixel_values"], image_grid_thw=second["image_grid_thw"])
    try:
        out = model.generate(**conversation, max_new_tokens=1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **{name: cache})
    except ValueError as exc:
        assert "Multi-turn" in str(exc)
        return
    torch.testing.assert_close(out.logits[0].double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_generated_image_token_is_text(kind):
    """A decoding step whose token is the image placeholder id (the model generated it) is
    text, as the model embeds it (4.57 / 5.0 hand the prompt's grids on every step: they
    are not fitted to it). generate() forced to emit it decodes on, and the next step's
    logits are those of one uncached forward over the prompt and a text token that has
    its embedding (text after images is checked against the reference in
    test_hf_qwen_c2rope.py)."""
    model = make_model(kind)
    inputs, _ = make_prompt(kind, batch=2)
    circle = CircleRoPEConfig(age_strategy=random.choice(["all", "alternate"]))
    c2rope.patch_model(model, random.choice(CONFIGS + [circle]))
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False, output_logits=True,
                             return_dict_in_generate=True,
                             begin_suppress_tokens=[t for t in range(vocab) if t != IMAGE_ID])
    step = out.sequences[:, -2:-1]
    assert bool((step == IMAGE_ID).all())
    standin = 55  # a text id no prompt holds (words are 3..50), given the image token's embedding
    assert not bool((inputs["input_ids"] == standin).any())
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[standin] = embeddings[IMAGE_ID]
        want = model(**_append_text(inputs, torch.full_like(step, standin))).logits[:, -1]
    torch.testing.assert_close(out.logits[1].to(want.dtype), want, rtol=0, atol=cache_tolerance(kind))


def test_circle_refuses_images_after_a_cache():
    kind = random.choice(["qwen2_5_vl", "qwen3_vl"])
    model = make_model(kind)
    first, _ = make_prompt(kind, batch=1, videos=False)
    second, _ = make_prompt(kind, batch=1, videos=False)
    c2rope.patch_model(model, CircleRoPEConfig(age_strategy=random.choice(["all", "alternate"])))
    name = _cache_name(model)
    with torch.no_grad():
        cache = _cache(model(**first, use_cache=True))
        mask = torch.cat([first["attention_mask"], second["attention_mask"]], dim=1)
        with pytest.raises(ValueError, match="Circle-RoPE cannot add images"):
            model(**dict(second, attention_mask=mask), **{name: cache})
