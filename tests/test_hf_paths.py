"""The patch holds on every path that runs the decoder (the top-level forward, the inner
multimodal model called directly as TRL's fused LM head and backbone calls do, PEFT,
accelerate's prepare), unpatching leaves wrappers added since in place and working,
and `c2rope.verify` / the first-training-forward check fail loudly on a broken patch."""
import copy

import pytest
import torch

from test_hf_common import (  # noqa: F401  (skips under transformers < 5)
    IMG, assert_close_valid, causal_lm, find_decoder, reference_logits, transformers,
)
from test_hf_llava import _inputs as llava_inputs
from test_hf_llava import tiny_llava
from test_hf_llava_next import _two_rows as next_inputs
from test_hf_llava_next import tiny_model as tiny_anyres

import c2rope


def _case(kind):
    """(model, ids, mask, spans, image kwargs) for a tiny LLaVA or LLaVA-NeXT."""
    if kind == "llava":
        ids, mask, spans, pixels = llava_inputs()
        return tiny_llava("sdpa"), ids, mask, spans, {"pixel_values": pixels}
    ids, mask, spans, kwargs = next_inputs("next")
    return tiny_anyres("next"), ids, mask, spans, kwargs


def _inner_logits(model, ids, mask, kwargs):
    """What TRL's fused LM head runs: the inner model called directly, then the head."""
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        return model.lm_head(hidden)


@pytest.mark.parametrize("kind", ["llava", "next"])
def test_inner_model_called_directly_is_patched(kind):
    model, ids, mask, spans, kwargs = _case(kind)
    config = c2rope.C2RoPEConfig()
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    unpatched = _inner_logits(model, ids, mask, kwargs)
    c2rope.patch_model(model, config)
    got = _inner_logits(model, ids, mask, kwargs)
    assert_close_valid(got, expected, mask)
    valid = mask.bool()
    assert (got - unpatched)[valid].abs().max() > 1e-2  # images really changed the result
    with torch.no_grad():  # and the top-level forward agrees
        assert_close_valid(model(input_ids=ids, attention_mask=mask, **kwargs).logits, expected, mask)


def test_peft_lora_paths_are_patched():
    peft = pytest.importorskip("peft")
    model, ids, mask, spans, kwargs = _case("llava")
    config = c2rope.C2RoPEConfig()
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    c2rope.patch_model(model, config)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    c2rope.verify(lora)
    with torch.no_grad():  # LoRA starts as the identity: the patched model's logits
        assert_close_valid(lora(input_ids=ids, attention_mask=mask, **kwargs).logits, expected, mask)
    inner = lora.base_model.model  # peft's base_model -> the LLaVA model -> its inner model
    assert_close_valid(_inner_logits(inner, ids, mask, kwargs), expected, mask)


def _accelerator():
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
    if not accelerator.native_amp:
        pytest.skip("accelerate gives no native bf16 autocast on this machine")
    return accelerator


def test_accelerate_prepare_then_unpatch_keeps_its_wrapper():
    model, ids, mask, spans, kwargs = _case("llava")
    plain = copy.deepcopy(model)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    prepared = _accelerator().prepare(model)
    plain_prepared = _accelerator().prepare(plain)
    c2rope.verify(prepared)
    wrapper = vars(prepared)["forward"]  # accelerate's autocast wrapper, added after the patch
    with torch.no_grad():
        patched_out = prepared(input_ids=ids, attention_mask=mask, **kwargs).logits
        plain_out = plain_prepared(input_ids=ids, attention_mask=mask, **kwargs).logits
    assert (patched_out - plain_out)[mask.bool()].abs().max() > 1e-2
    c2rope.unpatch_model(prepared)
    assert vars(prepared)["forward"] is wrapper  # still there, and still working:
    with torch.no_grad():
        after = prepared(input_ids=ids, attention_mask=mask, **kwargs).logits
    torch.testing.assert_close(after, plain_out, atol=0, rtol=0)


def test_unpatch_keeps_a_generate_wrapper_added_since():
    model = causal_lm("llama")
    ids = torch.randint(1, 90, (1, 6))
    expected = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=(2, 2))
    inner = model.generate
    calls = []

    def counting_generate(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    model.generate = counting_generate
    c2rope.unpatch_model(model)
    assert model.generate is counting_generate
    got = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert calls and torch.equal(got, expected)
    layout = c2rope.VisualLayout.from_spans([[(1, 2, 2)]], 6)
    with pytest.raises(TypeError, match="no longer patches"):
        model.generate(input_ids=ids, max_new_tokens=1, visual_layout=layout)


def test_patch_after_a_forward_wrapper_then_unpatch_restores_it():
    model, ids, mask, _, kwargs = _case("llava")
    original = model.forward

    def wrapper(*args, **kw):
        return original(*args, **kw)

    model.forward = wrapper
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    c2rope.unpatch_model(model)
    assert model.forward is wrapper


def test_verify_fails_loudly_on_a_broken_patch():
    model, ids, mask, _, kwargs = _case("llava")
    with pytest.raises(RuntimeError, match="no c2rope patch"):
        c2rope.verify(model)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    c2rope.verify(model)
    decoder = find_decoder(model)
    adapter = decoder.rotary_emb
    decoder.rotary_emb = adapter.original  # the layers now get plain RoPE tables
    with pytest.raises(RuntimeError, match=r"layer 0 .*did not receive c2rope's positions.*LlamaModel \(decoder\)"):
        c2rope.verify(model)
    decoder.rotary_emb = adapter
    c2rope.verify(model)
    state = model._c2rope_record.state
    state.needs_mask = lambda plan, implementation=None: False  # the mask is no longer handed over
    with pytest.raises(RuntimeError, match=r"layer 0 .*did not receive c2rope's mask"):
        c2rope.verify(model)


def test_first_training_forward_checks_every_layer():
    model, ids, mask, _, kwargs = _case("llava")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    broken = copy.deepcopy(model)
    labels = ids.masked_fill((mask == 0) | (ids == IMG), -100)
    decoder = find_decoder(broken)
    decoder.rotary_emb = decoder.rotary_emb.original
    broken.train()
    with pytest.raises(RuntimeError, match=r"first training forward.*layer 0 .*LlavaModel \(inner model\)"):
        broken(input_ids=ids, attention_mask=mask, labels=labels, **kwargs)
    with torch.no_grad():  # evaluation calls are not checked
        broken(input_ids=ids, attention_mask=mask, **kwargs)
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs).loss.backward()
    assert model._c2rope_record.state.training_checked
    # the inner model called directly (a fused LM head) is checked the same way
    broken_inner = copy.deepcopy(broken)
    with pytest.raises(RuntimeError, match=r"first training forward.*LlavaModel \(inner model\) -> LlamaModel"):
        broken_inner.model(input_ids=ids, attention_mask=mask, **kwargs)


def test_training_with_images_c2rope_cannot_see_is_refused():
    model, ids, mask, _, kwargs = _case("llava")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    model.train()
    embeds = model.get_input_embeddings()(ids)
    with pytest.raises(RuntimeError, match="pixel values reached the model"):
        model(inputs_embeds=embeds, attention_mask=mask, **kwargs)


def test_gradient_checkpointing_through_the_inner_model():
    model, ids, mask, spans, kwargs = _case("llava")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    model.train()
    labels = ids.masked_fill((mask == 0) | (ids == IMG), -100)
    plain = model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs).loss
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hidden = model.model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
    logits = model.lm_head(hidden).float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, plain, atol=1e-6, rtol=1e-6)
    loss.backward()
