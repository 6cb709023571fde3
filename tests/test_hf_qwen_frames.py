"""options={"frame_axis": "separate"} on tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL
models: the frame index of video tokens on its own (4th) axis, rotating the slower half
of the slots m had (docs/qwen.md, "Video"). Reference: the unpatched model handed cos/sin
of c2rope.reference.cos_sin_ref on positions and tables written out in test_hf_qwen_c2rope
(token by token from the prompt builder's spans), and the reference mask."""
import random

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig
from c2rope.mrope import frame_axis_table
from c2rope.reference import position_ids_ref

transformers = pytest.importorskip("transformers")
from qwen_tiny import KINDS, VIDEO_ID, make_model, make_prompt  # noqa: E402
from test_hf_qwen_c2rope import (CONFIGS, _valid_rows, frame_rows, model_axis_table, reference_logits,  # noqa: E402
                                 video_frames, with_frame_axis)


@pytest.mark.parametrize("frequencies", ["model", "c2rope"])
@pytest.mark.parametrize("kind", KINDS)
def test_frame_axis_matches_reference(kind, frequencies):
    model = make_model(kind)
    config = random.choice(CONFIGS)
    inputs, spans = make_prompt(kind)  # row 0 always holds a video
    want = reference_logits(model, inputs, spans, config, frequencies, "separate")
    # Frame order in m only, through the same float64 tables (the model's own rotary module
    # rounds in float32: 1e-7 away even where the frame axis changes nothing).
    folded = reference_logits(model, inputs, spans, config, frequencies, float64_tables=True)
    c2rope.patch_model(model, config, options={"frequencies": frequencies, "frame_axis": "separate"})
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid_rows(got, inputs), _valid_rows(want, inputs), rtol=1e-9, atol=1e-9)
    change = (_valid_rows(got, inputs) - _valid_rows(folded, inputs)).abs().max()
    if frame_axis_moves(inputs, spans, config):
        # Some frame token's frame value differs from its m: the logits change (by 2.6e-7 at
        # least in one 5.0.0 draw: small weights on the frame rows).
        assert change > 0
    else:
        # Every frame token's m already is its frame value (concentric m on frames of one ring,
        # e.g. 1x2 merged grids: one m per frame, one frame per step): the same rotation.
        assert change == 0


def frame_axis_moves(inputs, spans, config) -> bool:
    """Whether the frame axis gives some video token a value other than its m."""
    triplets = position_ids_ref(spans, inputs["attention_mask"].bool(), config)
    return not torch.equal(frame_rows(video_frames(inputs, spans), triplets), triplets[..., 0].double())


def test_frame_axis_can_coincide_with_m():
    # The draw that made the check above flaky (C2ROPE_TEST_SEED=812579178): three 1x2 frames
    # with concentric m, where m is already the frame index; and 3x3 frames (two rings), where not.
    config = C2RoPEConfig(coords="merged", temporal="concentric", mask="inward")
    ids = torch.full((1, 18), VIDEO_ID)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert not frame_axis_moves(inputs, [[(0, 1, 2), (2, 1, 2), (4, 1, 2)]], config)
    assert frame_axis_moves(inputs, [[(0, 3, 3), (9, 3, 3)]], config)


@pytest.mark.parametrize("kind", KINDS)
def test_without_video_the_frame_axis_changes_nothing(kind):
    # Images and text only: every slot rotates by the same positions as without the option.
    model = make_model(kind)
    config = random.choice(CONFIGS)
    inputs, _ = make_prompt(kind, videos=False)
    c2rope.patch_model(model, config)
    with torch.no_grad():
        want = model(**inputs).logits
    c2rope.unpatch_model(model)
    c2rope.patch_model(model, config, options={"frame_axis": "separate"})
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, want)


def test_frame_slots_are_the_slower_half_of_m():
    model = make_model(random.choice(KINDS))
    table = model_axis_table(model)  # this test's (m, x, y) = (0, 1, 2) axes
    rows = [{0: 0, 2: 1, 1: 2}[a] for a in table]  # as rows (t, h, w)
    want = [{0: 0, 1: 2, 2: 1, 3: 3}[a] for a in with_frame_axis(table)]
    assert frame_axis_table(rows) == want
    # Qwen2-VL's real [16, 24, 24] sections: m keeps slots 0-7, the frame axis takes 8-15.
    real = frame_axis_table([0] * 16 + [1] * 24 + [2] * 24)
    assert real[:8] == [0] * 8 and real[8:16] == [3] * 8 and real[16:] == [1] * 24 + [2] * 24
    with pytest.raises(ValueError, match="frame_axis"):
        frame_axis_table([0, 1, 2, 1, 2])
    with pytest.raises(ValueError, match="row_table"):
        frame_axis_table([0, 4])


def test_frame_axis_training_backward_reaches_every_layer():
    kind = random.choice(KINDS)
    model = make_model(kind)
    inputs, _ = make_prompt(kind)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    c2rope.patch_model(model, C2RoPEConfig(), options={"frame_axis": "separate"})
    model.train()
    model(**inputs, labels=labels).loss.backward()
    for layer in model.model.language_model.layers:
        grad = layer.self_attn.q_proj.weight.grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
