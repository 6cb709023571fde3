"""C2RoPE on tiny random Gemma 4 models (c2rope/hf/families/gemma), in float64.

Gemma 4 differs from Gemma 3 where it matters to c2rope: images of variable
resolution (each image's grid from its own image_position_ids, often not square),
global layers with partial rotary (rope "proportional": c2rope splits only the rotated
frequencies), the model's bidirectional image block on sliding layers only, per-layer
inputs, a one-tensor rotary function in the layers (c2rope's tables, the release's
rotation). References as in test_hf_gemma3 (the unpatched model, explicit tables and
masks). On a release without Gemma 4 (before 5.24) patch_model's refusal is tested."""
import copy
import random

import pytest
import torch

import c2rope

transformers = pytest.importorskip("transformers")
from gemma_tiny import IMG, KERNEL, MAX_TOKENS, VIDEO, gemma4_image, gemma4_prompt, make_gemma4, text_prompt  # noqa: E402
from test_hf_gemma3 import (  # noqa: E402
    CONFIGS, _valid, decoding_steps_match_reference, generated_image_token_is_text, reference_logits,
    training_step_with_gradient_checkpointing,
)

HAS_GEMMA4 = hasattr(transformers, "Gemma4ForConditionalGeneration")
needs_gemma4 = pytest.mark.skipif(not HAS_GEMMA4,
                                  reason=f"transformers {transformers.__version__} does not ship Gemma 4 "
                                  "(test_refused_without_gemma4)")


@needs_gemma4
@pytest.mark.parametrize("kv_shared_layers", [0, 2])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_images_match_reference(implementation, kv_shared_layers):
    model = make_gemma4(implementation, kv_shared_layers=kv_shared_layers)
    config = random.choice(CONFIGS)
    inputs, spans = gemma4_prompt()
    want = reference_logits(model, config, inputs, spans).logits
    unpatched = copy.deepcopy(model)
    unpatched.set_attn_implementation("sdpa")
    with torch.no_grad():
        plain = unpatched(**inputs).logits
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid(got, inputs), _valid(want, inputs), rtol=1e-9, atol=1e-9)
    assert (_valid(got, inputs) - _valid(plain, inputs)).abs().max() > 1e-3


@needs_gemma4
def test_global_layers_rotate_only_their_rotated_frequencies():
    """Partial rotary: c2rope's tables leave the zero-frequency dims unrotated and put
    m, x and y on the rotated ones, so an image changes the global layers' tables."""
    model = make_gemma4()
    c2rope.patch_model(model)
    adapter = model.model.language_model.rotary_emb
    inv_freq = adapter.original.full_attention_inv_freq
    rotated = int((inv_freq != 0).sum())
    assert 0 < rotated < inv_freq.numel()
    layout = c2rope.VisualLayout.from_spans([[(1, 2, 3)]], 9)
    positions = c2rope.build_position_ids(layout, c2rope.C2RoPEConfig())
    cos, sin = adapter.ropes["full_attention"](torch.zeros(1, 9, 4, dtype=torch.float64), positions)
    half = inv_freq.numel()
    assert torch.equal(cos[..., rotated:half], torch.ones_like(cos[..., rotated:half]))
    assert torch.equal(sin[..., rotated:half], torch.zeros_like(sin[..., rotated:half]))
    spatial = [k for k, axis in enumerate(c2rope.C2RoPEConfig().axis_table(2 * rotated)) if axis > 0]
    assert spatial and cos[0, 1:7, spatial].std() > 0  # x, y reach the rotated dims


@needs_gemma4
def test_bidirectional_option_keeps_the_model_mask():
    model = make_gemma4()
    config = random.choice(CONFIGS)
    inputs, spans = gemma4_prompt()
    want = reference_logits(model, config, inputs, spans, model_mask=True).logits
    c2rope.patch_model(model, config, options={"image_attention": "bidirectional"})
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid(got, inputs), _valid(want, inputs), rtol=1e-9, atol=1e-9)


@needs_gemma4
def test_text_only_is_exact():
    model = make_gemma4(random.choice(["sdpa", "eager"]))
    inputs = text_prompt()
    with torch.no_grad():
        plain = model(**inputs).logits
    c2rope.patch_model(model, random.choice(CONFIGS))
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, plain, rtol=0, atol=0, equal_nan=True)


@needs_gemma4
@pytest.mark.parametrize("kv_shared_layers", [0, 2])
@pytest.mark.parametrize("beams", [1, 2])
def test_generate_cached_equals_uncached(beams, kv_shared_layers):
    model = make_gemma4(kv_shared_layers=kv_shared_layers)
    c2rope.patch_model(model, random.choice(CONFIGS))
    inputs, _ = gemma4_prompt()
    kw = dict(inputs, max_new_tokens=6, do_sample=False, num_beams=beams, pad_token_id=0,
              suppress_tokens=[IMG, VIDEO])
    with torch.no_grad():
        assert torch.equal(model.generate(**kw), model.generate(**kw, use_cache=False))


@needs_gemma4
def test_generated_image_token_is_text():
    inputs, spans = gemma4_prompt()
    generated_image_token_is_text(make_gemma4(), random.choice(CONFIGS), inputs, spans, type_ids="mm_token_type_ids")


@needs_gemma4
def test_decoding_steps_match_reference():
    inputs, spans = gemma4_prompt()
    decoding_steps_match_reference(make_gemma4(), random.choice(CONFIGS), inputs, spans, suppress=[IMG, VIDEO],
                                   type_ids="mm_token_type_ids")


@needs_gemma4
def test_training_step_with_gradient_checkpointing():
    inputs, spans = gemma4_prompt()
    training_step_with_gradient_checkpointing(make_gemma4(), random.choice(CONFIGS), inputs, spans)


@needs_gemma4
def test_unpatch_is_exact_and_verify_catches_the_release_rotary():
    model = make_gemma4()
    inputs, _ = gemma4_prompt()
    with torch.no_grad():
        before = model(**inputs).logits
    c2rope.patch_model(model, random.choice(CONFIGS))
    c2rope.verify(model)
    text = model.model.language_model
    adapter = text.rotary_emb
    text.rotary_emb = adapter.original
    with pytest.raises(RuntimeError, match="did not receive c2rope's positions"):
        c2rope.verify(model)
    text.rotary_emb = adapter
    c2rope.unpatch_model(model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=0, equal_nan=True)


@needs_gemma4
def test_grids_come_from_each_images_positions():
    from c2rope.hf.families.gemma.geometry import gemma4_grids

    shapes = [(int(h), int(w)) for h, w in torch.randint(1, 5, (3, 2))]
    positions = torch.stack([gemma4_image(h, w)[1] for h, w in shapes])
    assert gemma4_grids(positions, KERNEL) == shapes
    broken = positions.clone()
    broken[0, 0] = -1  # a patch missing from the first image
    with pytest.raises(ValueError, match="image 0"):
        gemma4_grids(broken, KERNEL)


@needs_gemma4
def test_wrong_grid_or_video_is_refused():
    model = make_gemma4()
    c2rope.patch_model(model)
    inputs, spans = gemma4_prompt(images_per_row=(1, 1))
    (_, h, w), = spans[0]
    wrong = inputs["image_position_ids"].clone()
    # The first image's patches say one row of tokens more (one less when one more would not
    # fit the processor's MAX_TOKENS: a 4x4 grid; C2ROPE_TEST_SEED=895276239).
    rows = h + 1 if (h + 1) * w <= MAX_TOKENS else h - 1
    wrong[0] = gemma4_image(rows, w)[1]
    with pytest.raises(ValueError, match="does not split into images|has more image tokens"):
        model(**dict(inputs, image_position_ids=wrong))
    ids = inputs["input_ids"].clone()
    ids[0, -1] = VIDEO
    with pytest.raises(ValueError, match="video is not supported"):
        model(input_ids=ids, attention_mask=inputs["attention_mask"])
    with pytest.raises(ValueError, match="image_position_ids"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


def test_refused_without_gemma4():
    from c2rope.hf.families.gemma import require_release

    if HAS_GEMMA4:
        require_release("gemma4")  # no error
        return
    with pytest.raises(TypeError, match="does not ship|does not"):
        require_release("gemma4")


@needs_gemma4
def test_check_says_supported(tmp_path, capsys):
    """`python -m c2rope check` on a Gemma 4 config.json as transformers writes it for
    its defaults (the library's stand-in for google/gemma-4-e2b-it: vision and audio
    towers, per-layer inputs, bfloat16 declared)."""
    from c2rope.cli.check_model import main as check_main

    config = transformers.Gemma4Config(vision_config=transformers.Gemma4VisionConfig(),
                                       audio_config=transformers.Gemma4AudioConfig())
    config.architectures = ["Gemma4ForConditionalGeneration"]
    fields = config.to_dict()
    fields["dtype"] = fields["text_config"]["dtype"] = "bfloat16"
    import json

    (tmp_path / "config.json").write_text(json.dumps(fields))
    code = check_main(str(tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("PASS") == 4 and "FAIL" not in out and out.splitlines()[-1] == "supported", out
    assert "pooled 3x3 to a 3x4 grid" in out and "bfloat16" in out, out
