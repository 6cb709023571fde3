"""c2rope/hf/encoded.py: the registry through which a patched get_image_features tells the
forward what each pre-encoded feature tensor stands for (5.24+ generate() passes
mm_encoder_outputs without the grids), shared by LLaVA-NeXT / OneVision, Gemma 4 and
LLaVA-OneVision-1.5; and each of those families refusing features it did not encode."""
import copy
import gc
import inspect
import random

import pytest
import torch

from c2rope.hf.encoded import EncodedFeatures


def _unknown(index):
    return f"feature {index} unknown"


def test_recall_gives_back_what_was_remembered_in_order():
    registry = EncodedFeatures()
    features = [torch.randn(random.randint(1, 5), 4) for _ in range(random.randint(2, 5))]
    items = [(random.randint(1, 9), random.randint(1, 9)) for _ in features]
    registry.remember(features, items)
    order = random.sample(range(len(features)), len(features))
    assert registry.recall([features[i] for i in order], _unknown) == [items[i] for i in order]
    # generate() repeats the same tensors for beams
    assert registry.recall(features + features, _unknown) == items + items


def test_a_tensor_it_did_not_see_is_refused_with_the_callers_message():
    registry = EncodedFeatures()
    seen = [torch.randn(3, 4), torch.randn(2, 4)]
    registry.remember(seen, ["a", "b"])
    stranger = seen[1].clone()  # equal values, another tensor
    with pytest.raises(ValueError, match="^feature 1 unknown$"):
        registry.recall([seen[0], stranger], _unknown)


def test_entries_go_with_their_tensors():
    registry = EncodedFeatures()
    kept, dropped = torch.randn(3, 4), torch.randn(3, 4)
    registry.remember([kept, dropped], ["kept", "dropped"])
    del dropped
    gc.collect()
    assert len(registry.entries) == 1
    assert registry.recall([kept], _unknown) == ["kept"]


def test_a_reused_id_is_not_taken_for_the_dead_tensor():
    """The id of a dead tensor may be handed to a new one: the weak reference tells them
    apart (an entry whose finaliser has not run yet must not match)."""
    registry = EncodedFeatures()
    old = torch.randn(3, 4)
    registry.remember([old], ["old"])
    newcomer = torch.randn(3, 4)
    # what a reused id looks like: the id's entry refers to another (dead or other) tensor
    registry.entries[id(newcomer)] = registry.entries.pop(id(old))
    with pytest.raises(ValueError, match="feature 0 unknown"):
        registry.recall([newcomer], _unknown)


def test_a_deep_copy_starts_empty_and_pickling_is_refused():
    import pickle

    registry = EncodedFeatures()
    feature = torch.randn(2, 2)
    registry.remember([feature], ["x"])
    clone = copy.deepcopy(registry)
    assert type(clone) is EncodedFeatures and clone.entries == {}
    assert registry.recall([feature], _unknown) == ["x"]
    with pytest.raises(TypeError):
        pickle.dumps(registry)


# ------------------------------------------------- the families that use it
def _foreign_features(encode):
    """mm_encoder_outputs whose tensors the patched model did not make: its own
    encoder's output (`encode()`) with every feature tensor replaced by an equal copy."""
    with torch.no_grad():
        out = encode()
    out = copy.copy(out)
    out.pooler_output = [f.clone() for f in out.pooler_output]
    return {"mm_encoder_outputs": {"image": out}}


def _needs_mm_encoder_outputs(model):
    if "mm_encoder_outputs" not in inspect.signature(type(model).forward).parameters:
        pytest.skip("this transformers release passes no mm_encoder_outputs (before 5.24)")


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_anyres_refuses_features_it_did_not_encode(kind):
    import c2rope
    from test_hf_llava_next import _two_rows, tiny_model

    model = tiny_model(kind)
    _needs_mm_encoder_outputs(model)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, kwargs = _two_rows(kind)
    foreign = _foreign_features(lambda: model.model.get_image_features(kwargs["pixel_values"], kwargs["image_sizes"]))
    with torch.no_grad(), pytest.raises(ValueError, match="image 0 of mm_encoder_outputs was not encoded .* anyres "
                                                          "grids are unknown; pass image_sizes"):
        model(input_ids=ids, attention_mask=mask, **foreign)


def test_gemma4_refuses_features_it_did_not_encode():
    import c2rope
    from test_hf_gemma4 import HAS_GEMMA4

    if not HAS_GEMMA4:
        pytest.skip("this transformers release does not ship Gemma 4")
    from gemma_tiny import gemma4_prompt, make_gemma4

    model = make_gemma4()
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    inputs, _ = gemma4_prompt()
    foreign = _foreign_features(lambda: model.model.get_image_features(inputs["pixel_values"],
                                                                       inputs["image_position_ids"]))
    plain = {k: v for k, v in inputs.items() if k not in ("pixel_values", "image_position_ids")}
    with torch.no_grad(), pytest.raises(ValueError, match="image 0 of mm_encoder_outputs was not encoded .* grid is "
                                                          "unknown; pass pixel_values with image_position_ids"):
        model(**plain, **foreign)


def test_onevision1_5_refuses_features_it_did_not_encode():
    import c2rope
    from test_hf_llava_onevision1_5 import HAS_FAMILY

    if not HAS_FAMILY:
        pytest.skip("this transformers release does not ship llava_onevision1_5")
    from test_hf_llava_onevision1_5 import _two_rows, tiny_model

    model = tiny_model()
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, kwargs = _two_rows()
    foreign = _foreign_features(lambda: model.model.get_image_features(kwargs["pixel_values"],
                                                                       kwargs["image_grid_thw"]))
    with torch.no_grad(), pytest.raises(ValueError, match="image 0 of mm_encoder_outputs was not encoded .* grid is "
                                                          "unknown; pass image_grid_thw"):
        model(input_ids=ids, attention_mask=mask, **foreign)
