"""Training a patched transformers 5.x model: gradients against the reference model,
gradient checkpointing, bf16 autocast, a PEFT LoRA model, torch.compile."""
import copy

import pytest
import torch

from test_hf_common import (  # noqa: F401  (skips under transformers < 5)
    IMG, assert_close_valid, batch_with_images, reference_logits, causal_lm, cos_sin_ref, find_decoder, position_ids_ref,
)

import c2rope
from c2rope.reference.mask import chebyshev_mask_ref

GRIDS = [(3, 4), (2, 2), (3, 3)]


def _batch():
    ids, mask, spans = batch_with_images(2, 30, [[(3, 3, 4)], [(2, 2, 2), (10, 3, 3)]], left_pad=(0, 4))
    labels = ids.masked_fill((mask == 0) | (ids == IMG), -100)
    return ids, mask, spans, labels


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference_grads(model, config, ids, mask, spans, labels):
    """Gradients of the unpatched model fed the reference cos/sin and mask."""
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    decoder = find_decoder(model)
    layout = c2rope.VisualLayout.from_spans(spans, ids.shape[1], attention_mask=mask)
    positions = position_ids_ref(spans, layout.valid, config)
    inv = decoder.rotary_emb.inv_freq
    cos, sin = cos_sin_ref(positions, inv, config.axis_table(2 * inv.numel()))
    decoder.rotary_emb.forward = lambda x, position_ids=None, **kw: (cos.to(x.dtype), sin.to(x.dtype))
    additive = chebyshev_mask_ref(layout.valid, layout.image_id, layout.ring, mode=config.mask,
                                  dtype=torch.float32)
    model(input_ids=ids, attention_mask=additive, labels=labels).loss.backward()
    return _grads(model)


def test_backward_matches_reference_and_checkpointing():
    config = c2rope.C2RoPEConfig()
    model = causal_lm("llama", "sdpa").train()
    ids, mask, spans, labels = _batch()
    expected = _reference_grads(model, config, ids, mask, spans, labels)
    c2rope.patch_model(model, config, image_token_id=IMG, grid=GRIDS)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    plain = _grads(model)
    assert set(plain) == set(expected)
    for name in expected:
        torch.testing.assert_close(plain[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    for reentrant in (False, True):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        checkpointed = _grads(model)
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast():
    model = causal_lm("llama", "sdpa").train()
    ids, mask, _, labels = _batch()
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    fp32 = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - fp32.item()) < 0.05
    assert all(torch.isfinite(g).all() for g in _grads(model).values())


def test_bf16_weights_eager():
    model = causal_lm("llama", "eager").train()
    ids, mask, _, labels = _batch()
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    fp32 = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    model.to(torch.bfloat16)  # the patch's rotary module follows the model's dtype moves
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - fp32) < 0.05
    assert all(torch.isfinite(g).all() for g in _grads(model).values())


@pytest.mark.parametrize("order", ["patch_then_peft", "peft_then_patch"])
def test_peft_lora(order):
    peft = pytest.importorskip("peft")
    config = c2rope.C2RoPEConfig()
    base = causal_lm("llama", "sdpa")
    ids, mask, spans, labels = _batch()
    expected = reference_logits(base, config, ids, mask, spans)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    if order == "patch_then_peft":
        c2rope.patch_model(base, config, image_token_id=IMG, grid=GRIDS)
        model = peft.get_peft_model(base, lora)
    else:
        model = peft.get_peft_model(base, lora)
        c2rope.patch_model(model, config, image_token_id=IMG, grid=GRIDS)
    assert c2rope.hf.is_patched(model)
    model.eval()
    with torch.no_grad():  # LoRA B starts at zero: the PEFT model is the patched base model
        assert_close_valid(model(input_ids=ids, attention_mask=mask).logits, expected, mask)
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n for n in trained)
    c2rope.unpatch_model(model)
    assert not c2rope.hf.is_patched(model)


@pytest.mark.parametrize("backend", ["aot_eager"])
def test_torch_compile_forward_backward(backend):
    torch._dynamo.reset()
    model = causal_lm("llama", "sdpa").train()
    ids, mask, _, labels = _batch()
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    eager_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    eager_loss.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend=backend)
    loss = compiled(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    got = _grads(model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_torch_compile_inductor_inference():
    torch._dynamo.reset()
    model = causal_lm("llama", "sdpa")
    ids, mask, _, _ = _batch()
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        got = torch.compile(model)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
