"""The patch-time probe of the Qwen-VL patchers (c2rope/hf/families/qwen_vl/probe.py): patch_model
(verify=True, the default) checks that every decoder attention layer gets c2rope's
tables and mask, and a layer the patch does not reach is named."""
import random

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig, CircleRoPEConfig

transformers = pytest.importorskip("transformers")
from qwen_tiny import KINDS, LAYERS, make_model, make_prompt  # noqa: E402


def _record(model):
    return vars(model)["_c2rope_record"]


def _probe(model):
    record = _record(model)
    record.probe(record.state)


def _plain_tables(text):
    """A layer pre-hook that hands the layer the model's tables of plain text positions:
    what a layer whose rotary the patch never reached would rotate by."""
    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        positions = torch.arange(hidden.shape[1]).view(1, 1, -1).expand(3, hidden.shape[0], -1)
        kwargs["position_embeddings"] = type(text.rotary_emb).forward(text.rotary_emb, hidden, positions)
        return args, kwargs
    return hook


@pytest.mark.parametrize("kind", KINDS)
def test_probe_passes_and_leaves_the_model_as_it_was(kind):
    model = make_model(kind)
    options = {"frequencies": random.choice(["model", "c2rope"]), "frame_axis": random.choice(["temporal", "separate"])}
    c2rope.patch_model(model, random.choice([C2RoPEConfig(), C2RoPEConfig.paper_code()]), options=options)
    assert model.model.rope_deltas is None  # the probe's deltas are not left behind
    inputs, _ = make_prompt(kind)
    with torch.no_grad():
        want = model(**inputs).logits
    model.model.rope_deltas = None
    _probe(model)
    assert model.model.rope_deltas is None
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, want)


def test_probe_names_a_layer_that_rotates_by_other_tables():
    kind = random.choice(KINDS)
    model = make_model(kind)
    options = {"frequencies": random.choice(["model", "c2rope"]), "frame_axis": random.choice(["temporal", "separate"])}
    c2rope.patch_model(model, C2RoPEConfig(), options=options)
    text = model.model.language_model
    index = random.randrange(LAYERS)
    handle = text.layers[index].register_forward_pre_hook(_plain_tables(text), with_kwargs=True)
    with pytest.raises(RuntimeError, match=f"layer {index} .*c2rope's positions"):
        _probe(model)
    handle.remove()
    _probe(model)


def test_probe_names_a_layer_that_never_gets_the_mask():
    kind = random.choice(KINDS)
    model = make_model(kind)
    index = random.randrange(LAYERS)

    def drop_mask(module, args, kwargs):
        kwargs["attention_mask"] = None
        return args, kwargs
    model.model.language_model.layers[index].self_attn.register_forward_pre_hook(drop_mask, with_kwargs=True)
    with pytest.raises(RuntimeError, match=f"layer {index} .*Chebyshev mask"):
        c2rope.patch_model(model, C2RoPEConfig())
    assert not c2rope.hf.is_patched(model)  # a refused patch is undone
    c2rope.patch_model(model, C2RoPEConfig(mask="causal"))  # no mask to deliver, nothing to miss


def test_probe_catches_the_rotary_put_back():
    # frame_axis="separate" replaces the text rotary's forward: put back, no layer gets the frame axis.
    kind = random.choice(KINDS)
    model = make_model(kind)
    c2rope.patch_model(model, C2RoPEConfig(), options={"frame_axis": "separate"})
    rotary = model.model.language_model.rotary_emb
    del rotary.forward  # the class's forward again
    with pytest.raises(RuntimeError, match="layer 0 .*c2rope's positions"):
        _probe(model)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_circle_probe_names_an_age_layer_put_back(kind):
    model = make_model(kind)
    config = CircleRoPEConfig(age_strategy="alternate")
    c2rope.patch_model(model, config)
    plan = config.layer_plan(LAYERS)
    index = random.choice([i for i, on_circle in enumerate(plan) if not on_circle])
    layer = model.model.language_model.layers[index]
    del layer.forward  # the original forward: the layer now rotates by Circle-RoPE, not M-RoPE
    with pytest.raises(RuntimeError, match=f"layer {index} .*M-RoPE positions"):
        _probe(model)


def test_circle_probe_refuses_a_layer_off_circle():
    model = make_model(random.choice(["qwen2_vl", "qwen3_vl"]))
    text = model.model.language_model
    index = random.randrange(LAYERS)
    text.layers[index].register_forward_pre_hook(_plain_tables(text), with_kwargs=True)
    with pytest.raises(RuntimeError, match=f"layer {index} .*Circle-RoPE positions"):
        c2rope.patch_model(model, CircleRoPEConfig(age_strategy="all"))
    assert not c2rope.hf.is_patched(model)
