"""copy.deepcopy of a patched Qwen-VL / Qwen3.5 model: the copy is patched, runs its own
weights with its own state, and unpatches alone (a plain threading.local in the state
made deepcopy raise TypeError before)."""
import copy

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig, CircleRoPEConfig

transformers = pytest.importorskip("transformers")
from qwen_tiny import ALL_KINDS, make_model, make_prompt  # noqa: E402


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[inputs["attention_mask"].bool()]


@pytest.mark.parametrize("config", [C2RoPEConfig(), CircleRoPEConfig()], ids=["c2rope", "circle"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_deepcopy_of_a_patched_model(kind, config):
    model = make_model(kind)
    inputs, _ = make_prompt(kind)
    c2rope.patch_model(model, config)
    before = _logits(model, inputs)
    clone = copy.deepcopy(model)
    assert c2rope.hf.is_patched(clone)
    torch.testing.assert_close(_logits(clone, inputs), before, rtol=0, atol=0)
    with torch.no_grad():
        for p in clone.model.language_model.layers[-1].mlp.parameters():
            p.mul_(1.5)
    # What the copy must compute: the same scaled weights, unpatched and patched afresh.
    fresh = copy.deepcopy(clone)
    c2rope.unpatch_model(fresh)
    c2rope.patch_model(fresh, config)
    got = _logits(clone, inputs)
    torch.testing.assert_close(got, _logits(fresh, inputs), rtol=0, atol=0)
    assert (got - before).abs().max() > 1e-3  # the copy runs its own weights
    torch.testing.assert_close(_logits(model, inputs), before, rtol=0, atol=0)
    c2rope.unpatch_model(clone)
    assert not c2rope.hf.is_patched(clone) and c2rope.hf.is_patched(model)
    torch.testing.assert_close(_logits(model, inputs), before, rtol=0, atol=0)
