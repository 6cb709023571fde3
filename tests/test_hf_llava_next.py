"""HF LLaVA-NeXT and LLaVA-OneVision (anyres images) patched: every image is a base-view
grid plus an unpadded high-resolution grid whose rows end in a newline token (the extra
right column); sizes come from image_sizes. Tiny random models built in code."""
import copy

import random

import pytest
import torch

from test_hf_common import (  # noqa: F401  (skips under transformers < 4.57)
    IMG, VOCAB, assert_close_valid, assert_text_only_unchanged, batch_with_images, reference_logits, text_config,
    transformers,
)
import family_checks as checks

import c2rope
from c2rope.hf.families.llava_next.anyres import AnyresGeometry

VIDEO = VOCAB - 2  # OneVision's video placeholder (batch_with_images draws ids below it)
PINPOINTS = [[8, 16], [16, 8], [16, 16]]  # tiles of 8x8 pixels, patch 2: 4x4 tokens per tile
MAX_TILES = 5  # pixel_values holds room for the base view + 2x2 tiles

# Hand-derived token grids per (height, width) in pixels: base view 4x4, then the
# high-res part as (rows, patches per row + 1 newline).
NEXT_GRIDS = {
    # 1x2 tiles (4x8), aspect 4 > 2: height cut to round(10 * 8/40) = 2 rows
    (10, 40): ((4, 4), (2, 9)),
    # 2x1 tiles (8x4), aspect 1/4 < 1/2: width cut to round(10 * 8/40) = 2 columns
    (40, 10): ((4, 4), (8, 3)),
    # 2x1 tiles (8x4): width round(13 * 8/30) = 3, padding (4-3)//2 = 0: nothing cut
    (30, 13): ((4, 4), (8, 5)),
}
# OneVision with vision_aspect_ratio="anyres_max_1": the high-res part is shrunk by
# r = sqrt(H*W / 16) (each side // r) when r > 1.1.
ONEVISION_GRIDS = {
    (10, 40): ((4, 4), (2, 9)),  # unpadded 2x8: r = 1, kept
    (10, 20): ((4, 4), (2, 6)),  # 1x2 tiles, 4x8, nothing cut: r = sqrt(2), 4//r = 2, 8//r = 5
    (30, 28): ((4, 4), (4, 5)),  # 2x2 tiles, 8x8 (width 7 rounds back to 8): r = 2 -> 4x4
}


def tiny_model(kind, implementation="sdpa"):
    if kind == "next":
        vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=8, patch_size=2, projection_dim=32)
        config = transformers.LlavaNextConfig(vision_config=vision, text_config=text_config("llama"),
                                              image_token_id=IMG, vision_feature_layer=-1,
                                              image_grid_pinpoints=PINPOINTS)
        model = transformers.LlavaNextForConditionalGeneration(config)
    else:
        vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=8, patch_size=2)
        config = transformers.LlavaOnevisionConfig(vision_config=vision, text_config=text_config("qwen2"),
                                                   image_token_id=IMG, video_token_id=VIDEO, vision_feature_layer=-1,
                                                   image_grid_pinpoints=PINPOINTS, vision_aspect_ratio="anyres_max_1")
        model = transformers.LlavaOnevisionForConditionalGeneration(config)
    model.eval()
    model.set_attn_implementation(implementation)
    return model


def _grids(kind):
    return NEXT_GRIDS if kind == "next" else ONEVISION_GRIDS


def _tokens(grids):
    return sum(h * w for h, w in grids)


def prompt(kind, rows, seq, left_pad=()):
    """rows: per batch row, a list of (start counted from the first real token, (height, width)).
    Returns (ids, attention_mask, reference spans, forward kwargs with pixels and sizes)."""
    table = _grids(kind)
    runs = [[(start, 1, _tokens(table[size])) for start, size in row] for row in rows]
    ids, mask, placed = batch_with_images(len(rows), seq, runs, left_pad)
    spans, sizes = [], []
    for row, placed_row in zip(rows, placed):
        spans.append([])
        for (_, size), (start, _, _) in zip(row, placed_row):
            for h, w in table[size]:
                spans[-1].append((start, h, w))
                start += h * w
            sizes.append(size)
    pixels = torch.randn(len(sizes), MAX_TILES, 3, 8, 8)
    return ids, mask, spans, {"pixel_values": pixels, "image_sizes": torch.tensor(sizes)}


def _two_rows(kind):
    """Row 0: two images of different sizes; row 1, left-padded: a third size."""
    sizes = list(_grids(kind))
    return prompt(kind, [[(3, sizes[0]), (3 + _tokens(_grids(kind)[sizes[0]]) + 4, sizes[1])], [(2, sizes[2])]],
                  90, left_pad=(0, 7))


def _config(name):
    return c2rope.C2RoPEConfig() if name == "seed_defaults" else c2rope.C2RoPEConfig.paper_code()


def _feature_lengths(model, kwargs):
    with torch.no_grad():
        features = model.model.get_image_features(kwargs["pixel_values"], kwargs["image_sizes"])
    features = getattr(features, "pooler_output", features)
    return [f.shape[0] for f in features]


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_grids_match_the_features_the_model_makes(kind):
    model = tiny_model(kind)
    geometry = AnyresGeometry(model)
    table = _grids(kind)
    sizes = torch.tensor(list(table))
    derived = geometry.images(sizes)
    assert [item.grids for item in derived] == list(table.values())
    # the model's own feature count per image is what the placeholders must hold
    lengths = _feature_lengths(model, {"pixel_values": torch.randn(len(sizes), MAX_TILES, 3, 8, 8),
                                       "image_sizes": sizes})
    assert lengths == [item.num_tokens for item in derived]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_matches_reference(kind, name, implementation):
    config = _config(name)
    model = tiny_model(kind, implementation)
    ids, mask, spans, kwargs = _two_rows(kind)
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    c2rope.patch_model(model, config)  # verify=True: the probe forward runs
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, **kwargs).logits
        plain = copy.deepcopy(model)
        c2rope.unpatch_model(plain)
        unpatched = plain(input_ids=ids, attention_mask=mask, **kwargs).logits
    assert_close_valid(got, expected, mask)
    assert (got - unpatched)[mask.bool()].abs().max() > 1e-4  # the images really moved


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_bare_model_matches_reference(kind):
    """LlavaNextModel / LlavaOnevisionModel (no LM head) patched on their own."""
    checks.bare_model_matches_reference(tiny_model(kind, "eager"), c2rope.C2RoPEConfig(), *_two_rows(kind),
                                        atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_text_only_matches_unpatched(kind):
    assert_text_only_unchanged(tiny_model(kind), left_pad=(5, 0))


@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_generate_cached_equals_uncached(kind, name):
    model = tiny_model(kind)
    c2rope.patch_model(model, _config(name))
    sizes = list(_grids(kind))
    ids, mask, _, kwargs = prompt(kind, [[(3, sizes[0])], [(2, sizes[2])]], 72, left_pad=(0, 9))
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                  suppress_tokens=[IMG, VIDEO], **kwargs)
    cached = model.generate(**common)
    uncached = model.generate(**common, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    # the left-padded row computes what it computes alone (logits, not greedy tokens: a
    # random model's near-tied top logits could flip on float rounding)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, **kwargs).logits[1, 9:]
        alone = model(input_ids=ids[1:, 9:], attention_mask=mask[1:, 9:], pixel_values=kwargs["pixel_values"][1:],
                      image_sizes=kwargs["image_sizes"][1:]).logits[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_generated_image_token_is_text(kind):
    ids, mask, spans, kwargs = _two_rows(kind)
    checks.generated_image_token_is_text(tiny_model(kind), _config(random.choice(["seed_defaults", "paper_code"])),
                                         ids, mask, spans, kwargs, IMG, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_image_after_a_cached_prefix(kind):
    """An image in a chunk that follows a KV cache: its grids are placed after the cached
    tokens, as in one full forward."""
    model = tiny_model(kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    sizes = list(_grids(kind))
    ids, mask, _, kwargs = prompt(kind, [[(6, sizes[1])]], 56)
    checks.image_after_a_cached_prefix(model, ids, mask, kwargs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_beam_search_with_images(kind):
    """generate() repeats every row (and, from 5.24, the encoded image features) per beam:
    each copy must keep its image's grids."""
    model = tiny_model(kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    sizes = list(_grids(kind))
    ids, mask, _, kwargs = prompt(kind, [[(3, sizes[0])], [(2, sizes[1])]], 50, left_pad=(0, 4))
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
                  suppress_tokens=[IMG, VIDEO], num_beams=2, num_return_sequences=2, **kwargs)
    cached = model.generate(**common)
    assert cached.shape[0] == 4
    torch.testing.assert_close(cached, model.generate(**common, use_cache=False), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_training_step_matches_reference(kind):
    # every decoder and projector weight is trained (the vision tower's unused last norm
    # is not), without gradient checkpointing; the loss is the reference's
    grads = checks.training_step_matches_reference(tiny_model(kind, "eager"), c2rope.C2RoPEConfig(),
                                                   *_two_rows(kind), trained=("language_model", "projector"),
                                                   atol=1e-5, rtol=1e-5)
    assert grads["model.image_newline"].abs().sum() > 0  # the newline column is trained


def test_onevision_multi_image_samples_and_video():
    """batch_num_images: images of a multi-image sample are not tiled (base view 4x4 and
    a closing newline, text); a video is one pooled 2x2 grid per frame and a closing
    newline."""
    config = c2rope.C2RoPEConfig()
    model = tiny_model("onevision", "eager")
    ids = torch.randint(1, VIDEO - 1, (2, 40))
    ids[0, 2:19] = IMG  # sample 0: two untiled images, 16 + 1 tokens each
    ids[0, 21:38] = IMG
    ids[1, 3:37] = IMG  # sample 1: one tiled (10, 40) image, 16 + 2x9
    video_ids = torch.randint(1, VIDEO - 1, (1, 20))
    video_ids[0, 4:13] = VIDEO  # two frames of 2x2 + newline
    mask = torch.ones_like(ids)
    kwargs = {"pixel_values": torch.randn(3, MAX_TILES, 3, 8, 8),
              "image_sizes": torch.tensor([[16, 16], [12, 30], [10, 40]]), "batch_num_images": torch.tensor([2, 1])}
    spans = [[(2, 4, 4), (21, 4, 4)], [(3, 4, 4), (19, 2, 9)]]
    video = {"pixel_values_videos": torch.randn(1, 2, 3, 8, 8)}
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    expected_video = reference_logits(model, config, video_ids, torch.ones_like(video_ids), [[(4, 2, 2), (8, 2, 2)]],
                                      **video)
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, **kwargs).logits
        got_video = model(input_ids=video_ids, attention_mask=torch.ones_like(video_ids), **video).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_video, expected_video, atol=1e-5, rtol=1e-5)


def test_onevision_video_generate_equals_one_uncached_forward():
    """From 5.24 generate() encodes a video once and hands the forward its features
    (mm_encoder_outputs["video"]) without pixel_values_videos: the patched model still
    knows the frames (recorded by its get_video_features), and every cached step's logits
    equal one uncached forward over the generated sequence."""
    model = tiny_model("onevision", "eager")
    frames = random.randint(1, 3)
    tokens = frames * 4 + 1  # per frame a pooled 2x2 grid, then one closing newline
    before, after = random.randint(1, 5), random.randint(1, 5)
    ids = torch.randint(1, VIDEO - 1, (1, before + tokens + after))
    ids[0, before:before + tokens] = VIDEO
    pixels = torch.randn(1, frames, 3, 8, 8)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    # a random model may emit a placeholder token itself, which c2rope refuses in a decoding
    # step (docs/hf.md, "Caveats"): suppress both, as the other generate tests here do
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels,
                         max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True,
                         suppress_tokens=[IMG, VIDEO])
    sequence = out.sequences
    with torch.no_grad():
        whole = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), pixel_values_videos=pixels).logits
    for k, step in enumerate(out.logits):
        torch.testing.assert_close(step[0], whole[0, ids.shape[1] - 1 + k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_bad_input_is_refused_clearly(kind):
    model = tiny_model(kind)
    checks.refuses_a_grid_and_circle_rope(model, grid=(4, 4), match="derives every image's grids")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, kwargs = _two_rows(kind)
    # image 0 loses a token: its tokens no longer fit where it starts
    checks.refuses_an_image_missing_a_token(model, ids, mask, kwargs, match="image 0 ")
    with torch.no_grad(), pytest.raises(ValueError, match="no image_sizes"):
        model(input_ids=ids, attention_mask=mask)
    wrong = dict(kwargs, image_sizes=kwargs["image_sizes"].flip(0))  # the sizes in the wrong order
    with torch.no_grad(), pytest.raises(ValueError, match="image"):
        model(input_ids=ids, attention_mask=mask, **wrong)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_unpatch_restores(kind):
    model = tiny_model(kind)
    ids, mask, _, kwargs = _two_rows(kind)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, **kwargs).logits
        before = {name: vars(m).get("forward") for name, m in model.named_modules()}
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
        c2rope.unpatch_model(model)
        got = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    after = {name: vars(m).get("forward") for name, m in model.named_modules()}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_check_command_builds_anyres_inputs(kind, tmp_path, capsys):
    config = tiny_model(kind).config
    config.architectures = [{"next": "LlavaNextForConditionalGeneration",
                             "onevision": "LlavaOnevisionForConditionalGeneration"}[kind]]
    checks.check_command_passes(config, tmp_path, capsys)
