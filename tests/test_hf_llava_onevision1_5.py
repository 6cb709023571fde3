"""LLaVA-OneVision-1.5 (c2rope/hf/families/llava_onevision1_5.py) on tiny random models
built in code, in float64: a Qwen3 language model with 1-D RoPE; every image (one
`image_grid_thw` row) and every video frame is its own grid of merged tokens; the
vision start / end tokens are text. References are the UNPATCHED model fed
c2rope.reference's cos/sin and a 4-D additive mask (test_hf_common.reference_logits).

On a transformers release without the family (before 5.25) the model tests are
skipped with that reason, and patch_model's and check's refusals are tested instead."""
import importlib.util
import os
import random

import pytest
import torch

from test_hf_common import (  # noqa: F401  (skips under transformers < 4.57)
    IMG, VOCAB, reference_logits, transformers,
)
import family_checks as checks

import c2rope
from c2rope.hf.families.llava_onevision1_5 import require_release

HAS_FAMILY = importlib.util.find_spec("transformers.models.llava_onevision1_5") is not None
needs_family = pytest.mark.skipif(
    not HAS_FAMILY, reason=f"transformers {transformers.__version__} does not ship llava_onevision1_5")
VIDEO = VOCAB - 2
START, END = VOCAB - 3, VOCAB - 4  # <|vision_start|>, <|vision_end|>: text tokens
PATCH, MERGE = 2, 2
# image_grid_thw rows (frames, height, width in patches) -> merged grids of (H/2, W/2) tokens
SIZES = [(1, 4, 6), (1, 6, 6), (1, 6, 2)]
CONFIGS = (c2rope.C2RoPEConfig(), c2rope.C2RoPEConfig.paper_code())
# float64 models; the cos/sin tables (c2rope's and the reference's) are float32, which
# leaves ~2e-7 between them: a wrong position or mask moves logits by 1e-2 and more.
EXACT = dict(rtol=0, atol=1e-6)
HUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hub_configs",
                   "lmms-lab__LLaVA-OneVision-1.5-8B-Instruct")


def tiny_model(implementation="sdpa", dtype=torch.float64):
    text = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=256, pad_token_id=0)
    vision = dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=PATCH,
                  spatial_merge_size=MERGE, out_hidden_size=64)
    config = transformers.LlavaOnevision15Config(text_config=text.to_dict(), vision_config=vision, image_token_id=IMG,
                                                 video_token_id=VIDEO, vision_start_token_id=START,
                                                 vision_end_token_id=END)
    model = transformers.LlavaOnevision15ForConditionalGeneration(config).to(dtype).eval()
    model.set_attn_implementation(implementation)
    return model


def _pixels(grid_thw, dtype=torch.float64):
    return torch.randn(int(grid_thw.prod(-1).sum()), 3 * PATCH * PATCH, dtype=dtype)


def prompt(rows, seq, left_pad=(), video=None):
    """rows: per batch row, a list of (start from the first real token, index into SIZES
    or "video"). Every image / video is <|vision_start|> tokens <|vision_end|>.
    video: its grid_thw row (frames, h, w). Returns (ids, mask, reference spans, kwargs)."""
    ids = torch.randint(1, END - 1, (len(rows), seq))
    mask = torch.ones_like(ids)
    spans, images = [], []
    for b, row in enumerate(rows):
        pad = left_pad[b] if b < len(left_pad) else 0
        ids[b, :pad], mask[b, :pad] = 0, 0
        spans.append([])
        for start, which in row:
            t, h, w = video if which == "video" else SIZES[which]
            at = pad + start
            ids[b, at] = START
            first = at + 1
            for _ in range(t):
                spans[-1].append((first, h // MERGE, w // MERGE))
                first += h * w // MERGE ** 2
            ids[b, at + 1:first] = VIDEO if which == "video" else IMG
            ids[b, first] = END
            if which != "video":
                images.append(SIZES[which])
    kwargs = {}
    if images:
        grid = torch.tensor(images)
        kwargs.update(pixel_values=_pixels(grid), image_grid_thw=grid)
    if video is not None:
        grid = torch.tensor([video])
        kwargs.update(pixel_values_videos=_pixels(grid), video_grid_thw=grid)
    return ids, mask, spans, kwargs


def _two_rows():
    """Row 0: two images of different shapes; row 1, left-padded: a third shape."""
    return prompt([[(2, 0), (2 + 6 + 2 + 3, 1)], [(1, 2)]], 40, left_pad=(0, 7))


@needs_family
def test_generated_image_token_is_text():
    checks.generated_image_token_is_text(tiny_model(), random.choice(CONFIGS), *_two_rows(), IMG, **EXACT)


@needs_family
def test_language_model_is_one_dimensional_rope():
    """What the issue assumed, verified: a Qwen3 text model whose rotary takes [B, S]
    positions (no M-RoPE sections), and the inner model hands it arange positions."""
    model = tiny_model()
    text = model.model.language_model
    assert type(text).__name__ == "Qwen3Model"
    assert "mrope_section" not in (getattr(text.config, "rope_parameters", None) or {})
    seen = {}
    text.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    ids, mask, _, kwargs = _two_rows()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(seen["position_ids"], torch.arange(ids.shape[1]).unsqueeze(0))


@needs_family
def test_grids_are_the_features_the_model_makes():
    model = tiny_model()
    grid = torch.tensor(SIZES)
    with torch.no_grad():
        features = model.model.get_image_features(_pixels(grid), grid).pooler_output
    assert [f.shape[0] for f in features] == [t * h * w // MERGE ** 2 for t, h, w in SIZES]


@needs_family
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_matches_reference(implementation):
    model = tiny_model(implementation)
    checks.matches_reference_and_moves(model, random.choice(CONFIGS), *_two_rows(), **EXACT)


@needs_family
def test_video_frames_and_an_image_match_reference():
    config = random.choice(CONFIGS)
    model = tiny_model("eager")
    ids, mask, spans, kwargs = prompt([[(1, 0), (12, "video")]], 40, video=(3, 4, 4))
    assert len(spans[0]) == 4  # the image, then 3 frames of 2x2
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    torch.testing.assert_close(got, expected, **EXACT)


@needs_family
def test_bare_model_matches_reference():
    checks.bare_model_matches_reference(tiny_model("eager"), c2rope.C2RoPEConfig(), *_two_rows(), **EXACT)


@needs_family
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_text_only_is_exactly_unpatched(implementation):
    model = tiny_model(implementation, dtype=torch.float32)
    ids, mask, _, _ = prompt([[], []], 20, left_pad=(5, 0))
    checks.text_only_is_exactly_unpatched(model, random.choice(CONFIGS), ids, mask)


@needs_family
@pytest.mark.parametrize("beams", [1, 2])
def test_generate_cached_equals_uncached(beams):
    """From 5.24 generate() encodes the images first and passes mm_encoder_outputs
    without image_grid_thw (repeated by reference for beams): the grids come from the
    patched encoder's record."""
    model = tiny_model()
    c2rope.patch_model(model, random.choice(CONFIGS))
    ids, mask, _, kwargs = prompt([[(3, 0)], [(1, 1)]], 30, left_pad=(0, 6))
    # row 1's image: the second grid, its patches after the first image's
    alone = dict(image_grid_thw=kwargs["image_grid_thw"][1:],
                 pixel_values=kwargs["pixel_values"][int(kwargs["image_grid_thw"][0].prod()):])
    checks.generate_cached_equals_uncached(model, ids, mask, kwargs, suppress=[IMG, VIDEO], beams=beams, pad=6,
                                           alone_kwargs=alone, **EXACT)


@needs_family
def test_image_after_a_cached_prefix():
    model = tiny_model()
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, kwargs = prompt([[(5, 1)]], 24)
    checks.image_after_a_cached_prefix(model, ids, mask, kwargs, **EXACT)


@needs_family
def test_training_step_with_gradient_checkpointing_matches_reference():
    checks.training_step_matches_reference(tiny_model("eager"), random.choice(CONFIGS), *_two_rows(),
                                           trained=("language_model", "merger"),
                                           reentrant=random.choice([True, False]), **EXACT)


@needs_family
def test_verify_and_unpatch_exact():
    model = tiny_model()
    methods = {name: vars(model.model).get(name) for name in ("get_image_features", "get_video_features")}
    ids, mask, _, kwargs = _two_rows()
    checks.verify_and_unpatch_exact(model, random.choice(CONFIGS), ids, mask, kwargs)
    assert {name: vars(model.model).get(name) for name in methods} == methods


@needs_family
def test_tokens_that_disagree_with_the_grids_are_refused():
    model = tiny_model()
    checks.refuses_a_grid_and_circle_rope(model, grid=(2, 3), match="derives every image's grid")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, kwargs = _two_rows()
    checks.refuses_an_image_missing_a_token(model, ids, mask, kwargs, match="image 0 ")
    with torch.no_grad(), pytest.raises(ValueError, match="no image_grid_thw was given"):
        model(input_ids=ids, attention_mask=mask)
    odd = dict(kwargs, image_grid_thw=torch.tensor([[1, 4, 6], [1, 6, 6], [1, 5, 2]]))
    with torch.no_grad(), pytest.raises(ValueError, match=r"image_grid_thw\[2\] = \(1, 5, 2\)"):
        model(input_ids=ids, attention_mask=mask, **odd)
    swapped = dict(kwargs, image_grid_thw=kwargs["image_grid_thw"].flip(0))  # the grids in the wrong order
    with torch.no_grad(), pytest.raises(ValueError, match="image"):
        model(input_ids=ids, attention_mask=mask, **swapped)


@needs_family
def test_check_builds_from_model_type(tmp_path, capsys):
    config = tiny_model(dtype=torch.float32).config
    config.architectures = None
    out = checks.check_command_passes(config, tmp_path, capsys)
    assert "built as LlavaOnevision15ForConditionalGeneration (from model_type" in out, out
    assert "merged 2x2 -> a 4x6 grid of 24 image tokens" in out, out


def test_refused_without_a_release_that_ships_the_family(monkeypatch, capsys):
    """As on 4.57.6, 5.0.0 and 5.24.0: patch_model refuses the model type, and check
    refuses the published config.json from the file alone."""
    from c2rope.cli.check_model import main as check_main

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = transformers.PretrainedConfig()
            self.config.model_type = "llava_onevision1_5"

    if HAS_FAMILY:  # pretend to be a release without it
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name.startswith("transformers.models.llava_onevision1_5")
                            else real(name, *a))
    with pytest.raises(TypeError, match=r"LLaVA-OneVision-1.5 .* needs a transformers release that ships"):
        require_release("llava_onevision1_5")
    with pytest.raises(TypeError, match="needs a transformers release"):
        c2rope.patch_model(Fake(), c2rope.C2RoPEConfig())
    code = check_main(HUB)
    out = capsys.readouterr().out
    assert code == 2 and "NOT SUPPORTED" in out and "needs a transformers release" in out, out
    assert "nothing was built" in out


@needs_family
def test_packed_row_gives_each_sample_alone():
    model = tiny_model()
    c2rope.patch_model(model, random.choice(CONFIGS))
    text_ids = torch.randint(1, END - 1, (1, 7))
    ids, mask, _, kwargs = prompt([[(2, 0), (12, 2)]], 30)
    checks.packed_row_gives_each_sample_alone(model, text_ids, ids, mask, kwargs, **EXACT)


@needs_family
def test_deep_copy_of_a_patched_model_computes_the_same():
    model = tiny_model()
    c2rope.patch_model(model, random.choice(CONFIGS))
    ids, mask, _, kwargs = _two_rows()
    checks.deep_copy_computes_the_same(model, ids, mask, kwargs, suppress=[IMG, VIDEO])
