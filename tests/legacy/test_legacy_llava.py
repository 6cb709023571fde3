"""c2rope.patch_model on transformers 4.37.2 and the original LLaVA code (llava-torch
1.2.2.post1): image spans recorded where LLaVA splices features into inputs_embeds.

Run inside the legacy venv: .venv-legacy/bin/python -m pytest tests/legacy -q"""
import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
llava_model = pytest.importorskip("llava.model")

import c2rope  # noqa: E402
from c2rope.reference.mask import chebyshev_mask_ref  # noqa: E402
from c2rope.reference.positions import position_ids_ref  # noqa: E402
from c2rope.reference.rotary import cos_sin_ref, rotate_half  # noqa: E402
from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM  # noqa: E402

VOCAB = 96
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)


class TinyTower(nn.Module):
    """Stands in for LLaVA's CLIPVisionTower (which downloads CLIP): images [N, 3, 8, 8]
    -> one feature per 2x2 patch, [N, 16, 12], raster order like CLIP's patches."""

    is_loaded = True
    num_patches_per_side = 4

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 12)

    def forward(self, images):
        patches = images.unfold(2, 2, 2).unfold(3, 2, 2)
        return self.proj(patches.permute(0, 2, 3, 1, 4, 5).reshape(images.shape[0], 16, 12))


def tiny_llava(implementation="sdpa", padding_side="right"):
    config = LlavaConfig(**TEXT, mm_hidden_size=12)
    config._attn_implementation = implementation
    config.tokenizer_padding_side = padding_side
    model = LlavaLlamaForCausalLM(config).eval()
    model.get_model().vision_tower = TinyTower()
    model.get_model().mm_projector = nn.Linear(12, TEXT["hidden_size"])
    return model


def llava_batch(left=False):
    """Two prompts with one <image> each; row 1 padded. Returns ids, mask, images and the
    spans the splice must produce (16 feature tokens per image)."""
    ids = torch.randint(1, VOCAB - 1, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    if left:
        mask[1, :2] = 0
        ids[1, :2] = 0
        ids[0, 3] = ids[1, 2 + 5] = IMAGE_TOKEN_INDEX
        # after the splice: row 0 has 27 tokens, row 1 10 - 1 + 16 = 25, left-padded by 2,
        # so its image (5th valid token) starts at 2 + 5
        spans = [[(3, 4, 4)], [(2 + 5, 4, 4)]]
    else:
        mask[1, 10:] = 0
        ids[0, 3] = ids[1, 5] = IMAGE_TOKEN_INDEX
        spans = [[(3, 4, 4)], [(5, 4, 4)]]
    return ids, mask, torch.randn(2, 3, 8, 8), spans


def reference_logits(model, config, ids, mask, images, spans, monkeypatch):
    """The unpatched model's LlamaForCausalLM forward on LLaVA's spliced embeddings, with
    reference cos/sin swapped into modeling_llama and the reference mask as a 4-D mask."""
    from transformers.models.llama import modeling_llama

    model = copy.deepcopy(model)
    _, _, new_mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, images)
    layout = c2rope.VisualLayout.from_spans(spans, embeds.shape[1], attention_mask=new_mask)
    positions = position_ids_ref(spans, layout.valid, config)
    inv_freq = model.model.layers[0].self_attn.rotary_emb.inv_freq
    cos, sin = cos_sin_ref(positions, inv_freq, config.axis_table(2 * inv_freq.numel()))

    def apply(q, k, _cos, _sin, position_ids=None, unsqueeze_dim=1):
        c, s = cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype)
        return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", apply)
    allowed = chebyshev_mask_ref(layout.valid, layout.image_id, layout.ring, mode=config.mask)
    with torch.no_grad():
        out = transformers.LlamaForCausalLM.forward(model, inputs_embeds=embeds,
                                                     attention_mask=allowed.to(embeds.dtype)).logits
    monkeypatch.undo()
    return out, layout.valid


def _close_on_valid(actual, expected, valid, atol=1e-5):
    torch.testing.assert_close(actual[valid], expected[valid], atol=atol, rtol=1e-5)


def test_legacy_line_is_installed():
    assert transformers.__version__ == "4.37.2"


def _causal_lm(family, implementation):
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[family]
    config = cls[0](**TEXT)
    config._attn_implementation = implementation
    return cls[1](config).eval()


@pytest.mark.parametrize("family", ["llama"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_text_only_matches_unpatched(family, implementation):
    model = _causal_lm(family, implementation)
    ids = torch.randint(1, VOCAB, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["seed_defaults", "paper_code", "causal_mask"])
def test_llava_images_match_reference(implementation, name, monkeypatch):
    config = {"seed_defaults": c2rope.C2RoPEConfig(), "paper_code": c2rope.C2RoPEConfig.paper_code(),
              "causal_mask": c2rope.C2RoPEConfig(mask="causal")}[name]
    model = tiny_llava(implementation)
    ids, mask, images, spans = llava_batch()
    expected, valid = reference_logits(model, config, ids, mask, images, spans, monkeypatch)
    c2rope.patch_model(model, config)  # grid (4, 4) from the tower's num_patches_per_side
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, images=images).logits
    _close_on_valid(got, expected, valid)


def test_llava_left_padding_spans(monkeypatch):
    config = c2rope.C2RoPEConfig()
    model = tiny_llava("sdpa", padding_side="left")
    ids, mask, images, spans = llava_batch(left=True)
    expected, valid = reference_logits(model, config, ids, mask, images, spans, monkeypatch)
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, images=images).logits
    _close_on_valid(got, expected, valid)


@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
def test_llava_generate_with_cache_matches_full_recompute(name):
    config = c2rope.C2RoPEConfig() if name == "seed_defaults" else c2rope.C2RoPEConfig.paper_code()
    model = tiny_llava("sdpa", padding_side="left")
    c2rope.patch_model(model, config)
    ids, mask, images, _ = llava_batch(left=True)
    model.generation_config.eos_token_id = None  # a random model may emit EOS, then pads
    out = model.generate(ids, images=images, attention_mask=mask, max_new_tokens=4, do_sample=False,
                         use_cache=True, pad_token_id=0)
    new = out[:, -4:]
    # every generated token is the argmax of a cache-free forward over the prompt + tokens so far
    for t in range(new.shape[1]):
        full_ids = torch.cat([ids, new[:, :t]], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(new[:, :t])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=full_ids, attention_mask=full_mask, images=images).logits
        torch.testing.assert_close(logits[:, -1].argmax(-1), new[:, t], rtol=0, atol=0)


def test_llava_gradient_checkpointing():
    model = tiny_llava("sdpa").train()
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, images, _ = llava_batch()
    labels = ids.masked_fill(mask == 0, -100)

    def grads():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, images=images, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    for reentrant in (False, True):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        checkpointed = grads()
        assert set(plain) == set(checkpointed)
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_llava_unpatch_restores_and_flash_attention_refused():
    model = tiny_llava("sdpa")
    ids, mask, images, _ = llava_batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, images=images).logits
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="eager.*sdpa.*flex_attention"):
        model(input_ids=ids, attention_mask=mask, images=images)
    model.config._attn_implementation = "sdpa"
    c2rope.unpatch_model(model)
    assert all("forward" not in vars(m) for m in model.modules())
    assert "prepare_inputs_labels_for_multimodal" not in vars(model)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, images=images).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_grid_mismatch_is_reported():
    model = tiny_llava("sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), grid=(3, 3))
    ids, mask, images, _ = llava_batch()
    with pytest.raises(ValueError, match="grid"):
        model(input_ids=ids, attention_mask=mask, images=images)


def test_mistral_is_refused_on_the_legacy_line():
    # 4.37 Mistral reshapes position_ids to [-1, seq].long(), destroying the triplets.
    model = _causal_lm("mistral", "sdpa")
    with pytest.raises(TypeError, match="mistral"):
        c2rope.patch_model(model, c2rope.C2RoPEConfig())


@pytest.mark.parametrize("family", ["llama"])
def test_image_token_ids_cached_decode_matches_full_recompute(family):
    # Plain 4.37 decoders with image placeholder ids (another pipeline's convention).
    image_id = VOCAB - 1
    model = _causal_lm(family, "sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig.paper_code(), image_token_id=image_id, grid=(3, 3))
    ids = torch.randint(1, VOCAB - 2, (2, 20))
    ids[:, 4:13] = image_id
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    new = torch.randint(1, VOCAB - 2, (2, 3))
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    with torch.no_grad():
        full = model(input_ids=torch.cat([ids, new], dim=1), attention_mask=full_mask).logits
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache, steps = out.past_key_values, []
        for t in range(new.shape[1]):
            step = model(input_ids=new[:, t:t + 1], attention_mask=full_mask[:, :ids.shape[1] + t + 1],
                         past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            steps.append(step.logits)
        text_only = model(input_ids=torch.cat([ids, new], dim=1).masked_fill(
            torch.cat([ids, new], dim=1) == image_id, 7), attention_mask=full_mask).logits
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, ids.shape[1]:], atol=1e-5, rtol=1e-5)
    assert (text_only - full).abs().max() > 1e-5  # the image did change something


def test_dynamic_ntk_scaling_is_refused():
    config = transformers.LlamaConfig(**TEXT, rope_scaling={"type": "dynamic", "factor": 2.0})
    model = transformers.LlamaForCausalLM(config)
    with pytest.raises(NotImplementedError, match="dynamic"):
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
    assert all("forward" not in vars(m) for m in model.modules())


def test_fused_kernel_runs_in_every_layer():
    model = tiny_llava("sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, images, _ = llava_batch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, images=images)
    names = [event.name for event in prof.events()]
    assert names.count("c2rope::rotary") == model.config.num_hidden_layers
    assert names.count("c2rope::cos_sin") == 1  # built once per forward, shared by the layers


@pytest.mark.parametrize("mode", ["beams", "return_sequences"])
def test_llava_generate_expands_the_batch_after_the_splice(mode):
    # LLaVA's generate() splices the images first, then transformers repeats the rows for
    # beams / several returned sequences: the recorded splice must follow the rows.
    model = tiny_llava("sdpa", padding_side="left")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, images, _ = llava_batch(left=True)
    model.generation_config.eos_token_id = None
    kw = {"beams": dict(num_beams=3), "return_sequences": dict(num_beams=2, num_return_sequences=2)}[mode]
    cached = model.generate(ids, images=images, attention_mask=mask, max_new_tokens=3, do_sample=False,
                            pad_token_id=0, use_cache=True, **kw)
    assert cached.shape[0] == 2 * kw.get("num_return_sequences", 1)
    # beam search over a full recompute every step gives the same sequences
    expected_rows = []
    for row in range(2):
        with torch.no_grad():
            full = model.generate(ids[row:row + 1], images=images[row:row + 1], attention_mask=mask[row:row + 1],
                                  max_new_tokens=3, do_sample=False, pad_token_id=0, use_cache=True, **kw)
        expected_rows.append(full)
    torch.testing.assert_close(cached, torch.cat(expected_rows), rtol=0, atol=0)


def test_llava_failed_call_leaves_nothing_behind():
    model = tiny_llava("sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, images, _ = llava_batch()
    text = torch.randint(1, VOCAB - 1, (2, 27))
    text_mask = torch.ones_like(text)
    with torch.no_grad():
        expected = model(input_ids=text, attention_mask=text_mask).logits
    with pytest.raises((TypeError, ValueError)):
        model.generate(ids, images=images, attention_mask=mask, max_new_tokens=2, not_an_argument=1)
    import gc

    gc.collect()  # the failed call's spliced embeddings are gone, and their record with them
    with torch.no_grad():
        got = model(input_ids=text, attention_mask=text_mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_unpatch_restores_named_modules_and_frees_tables():
    import gc
    import weakref

    model = tiny_llava("sdpa")
    before = [name for name, _ in model.named_modules()]
    ids, mask, images, _ = llava_batch()
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, images=images)
    rope = weakref.ref(model.model.c2rope_rotary)
    c2rope.unpatch_model(model)
    assert [name for name, _ in model.named_modules()] == before
    gc.collect()
    assert rope() is None  # no patch/unpatch cycle keeps c2rope's rotary (and its tables) alive


def test_deepcopy_of_patched_llava_runs_its_own_weights():
    model = tiny_llava("sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, images, _ = llava_batch()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.lm_head.weight.mul_(2.0)
        original = model(input_ids=ids, attention_mask=mask, images=images).logits
        copied = clone(input_ids=ids, attention_mask=mask, images=images).logits
    torch.testing.assert_close(copied, 2.0 * original, atol=1e-5, rtol=1e-5)
    c2rope.unpatch_model(clone)
    assert c2rope.hf.is_patched(model) and not c2rope.hf.is_patched(clone)
