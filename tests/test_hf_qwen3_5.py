"""C2RoPE and Circle-RoPE on tiny random Qwen3.5 models, dense and MoE
(c2rope/hf/families/qwen3_5.py), in float64.

The tiny text stack is one Gated DeltaNet (linear-attention) layer, then one
full-attention layer, heads of 64 dims of which a quarter (16) are rotated by the
interleaved M-RoPE sections [2, 3, 3]. References are independent of the patch:
test_hf_qwen_c2rope.reference_logits (the unpatched model handed the triplets of
c2rope.reference, token by token, and the Chebyshev mask for the full-attention layers,
the 2-D padding mask for the linear-attention ones), and for Circle-RoPE the unpatched
model handed c2rope.mrope's Circle positions.

The tests every Qwen kind shares (prefill against the reference with both frequency
options and the frame axis, text-only bit-exact, generate cached == uncached ==
reference with left padding) run over Qwen3.5 too, in test_hf_qwen_c2rope.py; this file
holds what is particular to Qwen3.5; Circle-RoPE on Qwen3.5 is tested with the other
kinds in test_hf_qwen_circle.py. On a transformers release without Qwen3.5 (4.57,
5.0) every model test is skipped with that reason, and patch_model's refusal is tested
instead."""
import importlib.util
import json
import random

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig
from c2rope.reference import chebyshev_mask_ref, position_ids_ref

transformers = pytest.importorskip("transformers")
from qwen_tiny import (HAS_QWEN3_5, QWEN3_5_KINDS, SUPPRESS, join_turns,  # noqa: E402
                       make_model, make_prompt)
from test_hf_qwen_c2rope import CONFIGS, _image_tensors, _valid_rows, reference_logits  # noqa: E402

needs_qwen3_5 = pytest.mark.skipif(
    not HAS_QWEN3_5, reason=f"transformers {transformers.__version__} does not ship Qwen3.5 (qwen3_5, qwen3_5_moe)")
ROTARY_DIM = 16  # head_dim 64 * partial_rotary_factor 0.25


def _full_layers(model):
    return [layer for layer in model.model.language_model.layers if hasattr(layer, "self_attn")]


@needs_qwen3_5
def test_eager_attention_matches_reference():
    kind = random.choice(QWEN3_5_KINDS)
    model = make_model(kind, implementation="eager")
    config = random.choice(CONFIGS)
    inputs, spans = make_prompt(kind)
    want = reference_logits(model, inputs, spans, config)  # an additive 4-D mask under eager
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid_rows(got, inputs), _valid_rows(want, inputs), rtol=1e-9, atol=1e-9)


@needs_qwen3_5
@pytest.mark.parametrize("kind", QWEN3_5_KINDS)
def test_only_the_rotary_part_and_only_full_layers_change(kind):
    """Full-attention layers get tables of the rotary width (the pass-through dims of the
    head are left to the model) and the Chebyshev mask; the linear-attention layer gets
    exactly the inputs it gets unpatched (same hidden states in, same padding mask)."""
    model = make_model(kind)
    inputs, _ = make_prompt(kind)
    if bool(inputs["attention_mask"].all()):
        # Rows drawn of one length: transformers then hands the linear layer no mask at all;
        # pad row 1's first word so that there is a padding mask to pass through.
        inputs["attention_mask"][1, 0] = 0
    text = model.model.language_model
    seen = {}

    def catch(name):
        def hook(module, args, kwargs):
            seen[name] = (kwargs.get("hidden_states", args[0] if args else None), kwargs.get("attention_mask"),
                          kwargs.get("position_embeddings"))
        return hook

    linear = text.layers[0].linear_attn
    full = _full_layers(model)[0].self_attn
    handles = [linear.register_forward_pre_hook(catch("linear"), with_kwargs=True),
               full.register_forward_pre_hook(catch("full"), with_kwargs=True)]
    with torch.no_grad():
        model(**inputs)
        plain = dict(seen)
        c2rope.patch_model(model, C2RoPEConfig(), options={"frequencies": random.choice(["model", "c2rope"])})
        model(**inputs)
    for handle in handles:
        handle.remove()
    assert torch.equal(seen["linear"][0], plain["linear"][0])
    assert torch.equal(seen["linear"][1], plain["linear"][1]) and seen["linear"][1].dim() == 2  # padding mask
    cos, _ = seen["full"][2]
    assert cos.shape[-1] == ROTARY_DIM < full.head_dim
    assert seen["full"][1].dim() == 4 and not torch.equal(seen["full"][1], plain["full"][1])


@needs_qwen3_5
def test_beam_search_cached_equals_uncached():
    kind = random.choice(QWEN3_5_KINDS)
    model = make_model(kind)
    c2rope.patch_model(model, random.choice(CONFIGS))
    inputs, _ = make_prompt(kind, batch=2)
    runs = [model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False, use_cache=use_cache,
                           suppress_tokens=SUPPRESS) for use_cache in (True, False)]
    assert torch.equal(runs[0], runs[1])


@needs_qwen3_5
def test_second_turn_image_cached_equals_whole_conversation():
    kind = random.choice(QWEN3_5_KINDS)
    model = make_model(kind)
    config = random.choice(CONFIGS)
    first, _ = make_prompt(kind, batch=2)
    second, _ = make_prompt(kind, batch=2)
    c2rope.patch_model(model, config, options={"frequencies": random.choice(["model", "c2rope"])})
    with torch.no_grad():
        out = model(**first, use_cache=True)
        mask = torch.cat([first["attention_mask"], second["attention_mask"]], dim=1)
        turn = model(**dict(second, attention_mask=mask), use_cache=True, cache=out.cache).logits
        whole = model(**join_turns(first, second)).logits
    start = first["input_ids"].shape[1]
    valid = second["attention_mask"].bool()
    # Two turns through the cache run the release's float32 Gated DeltaNet kernel in other
    # chunks than one call over the whole conversation: over 40 seeds the max |diff| was
    # 6.4e-6 (median) to 3.8e-5, one seed 1.2e-4 (C2ROPE_TEST_SEED=1319240200); the
    # unpatched model on text-only turns: up to 2.7e-5. A model that ignored c2rope's
    # positions and mask on the second turn is off by 0.05-0.19 (5 seeds).
    torch.testing.assert_close(turn[valid], whole[:, start:][valid], rtol=0, atol=5e-4)


@needs_qwen3_5
def test_training_step_with_gradient_checkpointing_matches_reference():
    kind = random.choice(QWEN3_5_KINDS)
    model = make_model(kind)
    config = C2RoPEConfig()
    inputs, spans = make_prompt(kind)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    reference = make_model(kind)
    reference.load_state_dict(model.state_dict())
    reference.train()
    c2rope.patch_model(model, config)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    valid = inputs["attention_mask"].bool()
    triplets = position_ids_ref(spans, valid, config)
    image_id, ring = _image_tensors(spans, valid.shape[1])
    mask = {"full_attention": chebyshev_mask_ref(valid, image_id, ring), "linear_attention": inputs["attention_mask"]}
    arguments = {k: v for k, v in inputs.items() if k != "attention_mask"}
    want = reference(**arguments, labels=labels, position_ids=triplets[..., [0, 2, 1]].permute(2, 0, 1),
                     attention_mask=mask).loss
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-9, atol=1e-9)
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-7, atol=1e-9)
    assert _full_layers(model)[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].linear_attn.in_proj_qkv.weight.grad.abs().sum() > 0


@needs_qwen3_5
def test_probe_checks_full_and_linear_layers(monkeypatch):
    from c2rope.hf.families import qwen3_5

    kind = random.choice(QWEN3_5_KINDS)
    model = make_model(kind)
    # A linear-attention layer that loses its padding mask (padding would leak into its state).
    monkeypatch.setattr(qwen3_5.LayerTypeMasks, "__call__",
                        lambda self, mask, bound: {"full_attention": mask, "linear_attention": None})
    with pytest.raises(RuntimeError, match=r"linear-attention layer 0 \(Qwen3_5\w*GatedDeltaNet\)"):
        c2rope.patch_model(model, C2RoPEConfig())
    assert not c2rope.hf.is_patched(model)
    # A full-attention layer left on the model's causal mask.
    monkeypatch.setattr(qwen3_5.LayerTypeMasks, "__call__",
                        lambda self, mask, bound: {"full_attention": None, "linear_attention": None})
    with pytest.raises(RuntimeError, match=r"layer 1 \(Qwen3_5\w*Attention\) did not receive c2rope's Chebyshev"):
        c2rope.patch_model(model, C2RoPEConfig())
    assert not c2rope.hf.is_patched(model)
    monkeypatch.undo()
    c2rope.patch_model(model, C2RoPEConfig())
    assert model.model.rope_deltas is None  # the probe leaves the model's decoding state alone


@needs_qwen3_5
def test_packed_rows_with_images_are_refused():
    kind = random.choice(QWEN3_5_KINDS)
    model = make_model(kind)
    c2rope.patch_model(model, C2RoPEConfig())
    inputs, _ = make_prompt(kind, batch=1)
    ids = torch.cat([torch.randint(3, 50, (1, 4)), inputs["input_ids"]], dim=1)
    position_ids = torch.cat([torch.arange(4), torch.arange(inputs["input_ids"].shape[1])]).unsqueeze(0)
    packed = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with pytest.raises(ValueError, match="packed rows .* not supported on Qwen3.5"):
        model(input_ids=ids, position_ids=position_ids, **packed)
    text_ids = torch.randint(3, 50, (1, 9))  # text-only packed rows: the model's own behaviour
    text_positions = torch.cat([torch.arange(4), torch.arange(5)]).unsqueeze(0)
    with torch.no_grad():
        got = model(input_ids=text_ids, position_ids=text_positions).logits
        c2rope.unpatch_model(model)
        assert torch.equal(got, model(input_ids=text_ids, position_ids=text_positions).logits)


def test_refused_without_a_release_that_ships_qwen3_5(monkeypatch):
    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = transformers.PretrainedConfig()
            self.config.model_type = random.choice(QWEN3_5_KINDS)

    if HAS_QWEN3_5:  # as on 4.57 / 5.0: the module is not there
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name.startswith("transformers.models.qwen3_5") else real(name, *a))
    with pytest.raises(TypeError, match=r"Qwen3.5 .* needs a transformers release that ships"):
        c2rope.patch_model(Fake(), C2RoPEConfig())


# `python -m c2rope check` on config.json files as the hub publishes them (sizes and rope
# fields of Qwen/Qwen3.5-27B and Qwen/Qwen3.5-35B-A3B, dtype fields included).
_TEXT = {"attention_bias": False, "attention_dropout": 0.0, "attn_output_gate": True, "dtype": "bfloat16",
         "eos_token_id": 248044, "full_attention_interval": 4, "head_dim": 256, "hidden_act": "silu",
         "initializer_range": 0.02, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
         "linear_num_key_heads": 16, "linear_value_head_dim": 128, "max_position_embeddings": 262144,
         "mtp_num_hidden_layers": 1, "mtp_use_dedicated_embeddings": False, "rms_norm_eps": 1e-06,
         "use_cache": True, "vocab_size": 248320,
         "rope_parameters": {"mrope_interleaved": True, "mrope_section": [11, 11, 10], "partial_rotary_factor": 0.25,
                             "rope_theta": 10000000, "rope_type": "default"}}
_HUB = {
    "qwen3_5": dict(architectures=["Qwen3_5ForConditionalGeneration"], text=dict(
        _TEXT, model_type="qwen3_5_text", hidden_size=5120, intermediate_size=17408, linear_num_value_heads=48,
        num_attention_heads=24, num_hidden_layers=64, num_key_value_heads=4), out_hidden_size=5120),
    "qwen3_5_moe": dict(architectures=["Qwen3_5MoeForConditionalGeneration"], text=dict(
        _TEXT, model_type="qwen3_5_moe_text", hidden_size=2048, linear_num_value_heads=32, num_attention_heads=16,
        num_hidden_layers=40, num_key_value_heads=2, num_experts=256, num_experts_per_tok=8,
        moe_intermediate_size=512, shared_expert_intermediate_size=512, router_aux_loss_coef=0.001),
        out_hidden_size=2048),
}


def _hub_config(kind, folder):
    hub = _HUB[kind]
    text = dict(hub["text"])
    text["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention"
                           for i in range(text["num_hidden_layers"])]
    config = {"architectures": hub["architectures"], "model_type": kind, "image_token_id": 248056,
              "video_token_id": 248057, "vision_start_token_id": 248053, "vision_end_token_id": 248054,
              "tie_word_embeddings": False, "transformers_version": "4.57.0.dev0", "text_config": text,
              "vision_config": {"deepstack_visual_indexes": [], "depth": 27, "hidden_act": "gelu_pytorch_tanh",
                                "hidden_size": 1152, "in_channels": 3, "initializer_range": 0.02,
                                "intermediate_size": 4304, "model_type": kind, "num_heads": 16,
                                "num_position_embeddings": 2304, "out_hidden_size": hub["out_hidden_size"],
                                "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2}}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@needs_qwen3_5
@pytest.mark.parametrize("kind", QWEN3_5_KINDS)
def test_check_passes_on_the_hub_config(kind, tmp_path, capsys):
    from c2rope.cli.check_model import main as check_main

    code = check_main(_hub_config(kind, tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("PASS") == 4 and "FAIL" not in out and out.strip().endswith("supported")
    layers = _HUB[kind]["text"]["num_hidden_layers"]
    assert "mrope_section=[11, 11, 10] (interleaved), rotating 64 of 256 head dims (partial_rotary_factor=0.25" in out
    assert f"full-attention layers only ({layers * 3 // 4} of {layers} layers are linear attention" in out


@needs_qwen3_5
@pytest.mark.parametrize("kind", QWEN3_5_KINDS)
def test_no_deprecation_warning_from_the_linear_layer_masks(kind):
    """c2rope hands the release's mask builder the cache under one name: 5.25 warns
    (FutureWarning) when both `cache` and the deprecated `past_key_values` are given."""
    import warnings

    model = make_model(kind)
    c2rope.patch_model(model, C2RoPEConfig())
    inputs, _ = make_prompt(kind, videos=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with torch.no_grad():
            model(**inputs)
            model.generate(**inputs, max_new_tokens=2, do_sample=False, suppress_tokens=SUPPRESS)
