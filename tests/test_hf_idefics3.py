"""HF Idefics3 and SmolVLM / SmolVLM2 patched (c2rope/hf/families/idefics3.py): every tile
of an image (the split tiles and the global image, every video frame) is its own grid,
image_size // patch_size // scale_factor tokens a side, and the separator tokens around
them (<fake_token_around_image>, <row_r_col_c>, <global-img>, newlines, timestamps) are
text. Tiny random models built in code, compared in float64 with an independent
reference fed to the unpatched model (1e-6: c2rope computes the rotary angles in float32,
as transformers does, the reference in float64)."""
import copy

import pytest
import torch

from test_hf_common import (  # noqa: F401  (skips under transformers < 4.57)
    IMG, VOCAB, assert_close_valid, reference_logits, transformers,
)
import family_checks as checks

import c2rope
from c2rope.hf.families.idefics3 import TileGeometry

KINDS = ("idefics3", "smolvlm")
IMAGE_SIZE, PATCH = 24, 2  # 12 x 12 patches per tile
SCALE = {"idefics3": 2, "smolvlm": 3}  # tiles of 6x6 and 4x4 tokens
REF_TOL = 1e-6  # against the reference; the same computation on two paths is held to 1e-10
PIXEL_TILES = 5  # pixel_values hold room for 2 x 2 tiles + the global image


def tiny_model(kind, implementation="sdpa", dtype=torch.float64):
    text = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=1024, pad_token_id=0)
    if kind == "idefics3":
        vision = transformers.Idefics3VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
        config = transformers.Idefics3Config(vision_config=vision, text_config=text, image_token_id=IMG,
                                             scale_factor=SCALE[kind])
        model = transformers.Idefics3ForConditionalGeneration(config)
    else:
        vision = transformers.SmolVLMVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
        config = transformers.SmolVLMConfig(vision_config=vision, text_config=text, image_token_id=IMG,
                                            scale_factor=SCALE[kind])
        model = transformers.SmolVLMForConditionalGeneration(config)
    model.to(dtype).eval()
    model.set_attn_implementation(implementation)
    return model


def _tile(kind):
    side = IMAGE_SIZE // PATCH // SCALE[kind]
    return side, side * side


def _words(n):
    return torch.randint(1, VOCAB - 2, (n,)).tolist()


def image_prompt(kind, rows, cols):
    """One image as the processor writes it: for a split image, R x C tiles each after
    <fake><row_r_col_c> (random text ids here), a newline after each row of tiles, then
    a newline, <fake><global-img>, the global tile and <fake>; an unsplit image is the
    global part alone. Returns (ids, offsets of the tiles in ids, number of tiles)."""
    side, n = _tile(kind)
    ids, offsets = [], []
    for _ in range(rows):
        for _ in range(cols):
            ids += _words(2)
            offsets.append(len(ids))
            ids += [IMG] * n
        ids += _words(1)
    if rows:
        ids += _words(1)
    ids += _words(2)
    offsets.append(len(ids))
    ids += [IMG] * n + _words(1)
    return ids, offsets, rows * cols + 1


def batch(kind, rows, seq, left_pad=()):
    """rows: per batch row, a list of (text tokens before, (R, C)) images. Returns (ids,
    attention_mask, reference spans, pixel_values [rows, PIXEL_TILES, 3, S, S] with
    all-zero padding tiles, as the processor pads them)."""
    side, n = _tile(kind)
    ids = torch.randint(1, VOCAB - 2, (len(rows), seq))
    mask = torch.ones(len(rows), seq, dtype=torch.long)
    pixels = torch.zeros(len(rows), PIXEL_TILES, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64)
    spans = []
    for b, images in enumerate(rows):
        pad = left_pad[b] if b < len(left_pad) else 0
        ids[b, :pad], mask[b, :pad] = 0, 0
        position, tiles, row_spans = pad, 0, []
        for before, (r, c) in images:
            position += before
            piece, offsets, count = image_prompt(kind, r, c)
            ids[b, position:position + len(piece)] = torch.tensor(piece)
            row_spans += [(position + o, side, side) for o in offsets]
            pixels[b, tiles:tiles + count] = torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64)
            position += len(piece)
            tiles += count
        assert position <= seq and tiles <= PIXEL_TILES
        spans.append(row_spans)
    return ids, mask, spans, pixels


def two_rows(kind):
    """Row 0: an image split 1 x 2 (3 tiles) and an unsplit one; row 1, left-padded: an
    image split 2 x 1 (3 tiles). 5 tiles in row 0, 3 in row 1 (2 all-zero padding)."""
    return batch(kind, [[(3, (1, 2)), (4, (0, 0))], [(2, (2, 1))]], 180, left_pad=(0, 9))


def _config(name):
    return c2rope.C2RoPEConfig() if name == "seed_defaults" else c2rope.C2RoPEConfig.paper_code()


@pytest.mark.parametrize("kind", KINDS)
def test_tile_grid_is_the_models_own(kind):
    """The grid derived from the config holds the tokens the model's connector makes per
    tile, and the tokens its processor writes per tile (image_seq_len)."""
    model = tiny_model(kind)
    geometry = TileGeometry(model.config)
    side, n = _tile(kind)
    assert (geometry.tile, geometry.tokens) == (side, n)
    assert model.model.image_seq_len == n
    with torch.no_grad():
        features = model.model.get_image_features(torch.randn(1, 2, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64))
    features = getattr(features, "pooler_output", features)
    assert sum(f.shape[0] for f in features) == 2 * n


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(kind, name, implementation):
    config = _config(name)
    model = tiny_model(kind, implementation)
    ids, mask, spans, pixels = two_rows(kind)
    expected = reference_logits(model, config, ids, mask, spans, pixel_values=pixels)
    with torch.no_grad():
        unpatched = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        c2rope.patch_model(model, config)  # verify=True: the probe forward runs
        got = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert_close_valid(got, expected, mask, atol=REF_TOL, rtol=REF_TOL)
    # the tiles really moved (row 0: the unpatched float64 eager model turns row 1's left
    # padding into NaN, which its masked-out weights spread to the row's real tokens)
    assert (got - unpatched)[0].abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_generated_image_token_is_text(kind):
    ids, mask, spans, pixels = two_rows(kind)
    checks.generated_image_token_is_text(tiny_model(kind), c2rope.C2RoPEConfig(), ids, mask, spans,
                                         {"pixel_values": pixels}, IMG, atol=REF_TOL, rtol=REF_TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_bare_model_matches_reference(kind):
    """Idefics3Model / SmolVLMModel (no LM head) patched on their own."""
    ids, mask, spans, pixels = two_rows(kind)
    checks.bare_model_matches_reference(tiny_model(kind), c2rope.C2RoPEConfig(), ids, mask, spans,
                                        {"pixel_values": pixels}, atol=REF_TOL, rtol=REF_TOL)


def test_smolvlm2_video_frames_are_tiles():
    """A SmolVLM2 video: every frame is one global tile after its timestamp text."""
    config = c2rope.C2RoPEConfig()
    model = tiny_model("smolvlm")
    side, n = _tile("smolvlm")
    ids, spans = _words(7), []
    for _ in range(4):  # "\nFrame from 00:0k:" <fake><global-img> tile <fake>
        ids += _words(5)
        spans.append((len(ids), side, side))
        ids += [IMG] * n + _words(1)
    ids = torch.tensor([ids + _words(3)])
    mask = torch.ones_like(ids)
    pixels = torch.randn(1, 4, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64)
    expected = reference_logits(model, config, ids, mask, [spans], pixel_values=pixels)
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=REF_TOL, rtol=REF_TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_text_only_matches_unpatched(kind):
    """float32: bit for bit. float64: c2rope evaluates float64 cos/sin tables in float64
    (design.md section 9), transformers in float32 then casts, so the two differ by ~1e-8."""
    for dtype, tolerance in ((torch.float32, 0.0), (torch.float64, REF_TOL)):
        model = tiny_model(kind, "sdpa", dtype)
        ids = torch.randint(1, VOCAB - 2, (2, 24))
        mask = torch.ones_like(ids)
        ids[1, :5], mask[1, :5] = 0, 0
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits
            c2rope.patch_model(model, c2rope.C2RoPEConfig())
            got = model(input_ids=ids, attention_mask=mask).logits
        assert_close_valid(got, expected, mask, atol=tolerance, rtol=tolerance)


def _suppressed(model):
    """The image token and the end-of-sequence tokens: greedy runs of a random model then
    never stop early (generate() pads a finished row, a plain loop would not)."""
    eos = model.generation_config.eos_token_id
    return [IMG] + (list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


def _greedy_without_cache(model, ids, mask, pixels, steps):
    """Greedy decoding by full forwards with the images on every step (no KV cache)."""
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False).logits[:, -1]
        logits[:, _suppressed(model)] = float("-inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
@pytest.mark.parametrize("kind", KINDS)
def test_generate_cached_equals_uncached(kind, name):
    """generate() with the KV cache (left padding, two rows) gives the tokens of full
    forwards that see the images at every step; the left-padded row computes what it
    computes alone."""
    model = tiny_model(kind)
    c2rope.patch_model(model, _config(name))
    ids, mask, _, pixels = two_rows(kind)
    cached = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=5,
                            do_sample=False, pad_token_id=0, suppress_tokens=_suppressed(model))
    torch.testing.assert_close(cached, _greedy_without_cache(model, ids, mask, pixels, 5), rtol=0, atol=0)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[1, 9:]
        alone = model(input_ids=ids[1:, 9:], attention_mask=mask[1:, 9:], pixel_values=pixels[1:]).logits[0]
    torch.testing.assert_close(batched, alone, atol=1e-10, rtol=1e-10)


def _uncached_generate_keeps_images(model, ids, mask, pixels) -> bool:
    """Whether this release's generate(use_cache=False) passes the pixels to every step
    (5.0 drops them after the first, patched or not: its uncached tokens then are not
    the model's own)."""
    plain = copy.deepcopy(model)
    if c2rope.hf.is_patched(plain):
        c2rope.unpatch_model(plain)
    tokens = plain.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=4,
                            do_sample=False, pad_token_id=0, suppress_tokens=_suppressed(plain), use_cache=False)
    return bool(torch.equal(tokens, _greedy_without_cache(plain, ids, mask, pixels, 4)))


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_with_images(kind):
    """generate() repeats every row (and, from 5.24, the encoded features) per beam: each
    copy keeps its tiles; cached beams equal uncached beams where the release passes the
    images to every uncached step."""
    model = tiny_model(kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, pixels = two_rows(kind)
    common = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=4, do_sample=False,
                  pad_token_id=0, suppress_tokens=_suppressed(model), num_beams=2, num_return_sequences=2)
    cached = model.generate(**common)
    assert cached.shape[0] == 4
    if not _uncached_generate_keeps_images(model, ids, mask, pixels):
        pytest.skip(f"transformers {transformers.__version__}'s generate(use_cache=False) drops the images after "
                    "the first step (unpatched too); cached greedy decoding is compared with full forwards in "
                    "test_generate_cached_equals_uncached")
    torch.testing.assert_close(cached, model.generate(**common, use_cache=False), rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_training_step_with_gradient_checkpointing(kind, reentrant):
    """A training step with gradient checkpointing: the loss is the reference's, every
    gradient finite, the decoder and the connector trained; the first training forward's
    check passes."""
    config = c2rope.C2RoPEConfig()
    model = tiny_model(kind)
    reference = copy.deepcopy(model)
    ids, mask, spans, pixels = two_rows(kind)
    labels = ids.masked_fill(mask == 0, -100).masked_fill(ids == IMG, -100)
    c2rope.patch_model(model, config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    trained = [n for n, _ in model.named_parameters() if "text_model.layers" in n or "connector" in n]
    assert trained and all(n in grads and grads[n].abs().sum() > 0 for n in trained)
    expected = reference_logits(reference, config, ids, mask, spans, pixel_values=pixels)
    shifted = torch.nn.functional.cross_entropy(expected[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
                                                ignore_index=-100)
    torch.testing.assert_close(loss.detach(), shifted.to(loss.dtype), atol=REF_TOL, rtol=REF_TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_image_after_a_cached_prefix(kind):
    """An image in a chunk that follows a KV cache: its tiles are placed after the cached
    tokens, as in one full forward."""
    model = tiny_model(kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, pixels = batch(kind, [[(6, (1, 2))]], 140)
    checks.image_after_a_cached_prefix(model, ids, mask, {"pixel_values": pixels}, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_verify_and_unpatch(kind):
    # verify() checks every entry point: the model, Idefics3Model / SmolVLMModel, the text model
    ids, mask, _, pixels = two_rows(kind)
    checks.verify_and_unpatch_exact(tiny_model(kind), c2rope.C2RoPEConfig(), ids, mask, {"pixel_values": pixels})


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_refused_clearly(kind):
    model = tiny_model(kind)
    checks.refuses_a_grid_and_circle_rope(model, grid=(4, 4), match="derives every tile's grid")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, pixels = two_rows(kind)
    # the first tile loses a token
    checks.refuses_an_image_missing_a_token(model, ids, mask, {"pixel_values": pixels},
                                            match=r"row 0, .* not a whole number of tiles")
    fewer = pixels.clone()
    fewer[0, 3] = 0  # row 0's last tile becomes padding: 6 tiles of pixels for 7 tiles of tokens
    with torch.no_grad(), pytest.raises(ValueError, match=r"hold 7 tile\(s\) of image tokens .* pixel_values hold 6"):
        model(input_ids=ids, attention_mask=mask, pixel_values=fewer)
    small = pixels[..., :IMAGE_SIZE - 4, :IMAGE_SIZE - 4]
    with torch.no_grad(), pytest.raises(ValueError, match="pixel_values hold 20x20 px tiles"):
        model(input_ids=ids, attention_mask=mask, pixel_values=small)
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad(), pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=embeds, attention_mask=mask, pixel_values=pixels)


@pytest.mark.parametrize("kind", KINDS)
def test_image_tokens_without_images_stay_text(kind):
    """Image tokens in a call without pixels or features (transformers scatters nothing
    into them) are text, as unpatched."""
    model = tiny_model(kind, dtype=torch.float32)
    ids, mask, _, _ = two_rows(kind)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
        got = model(input_ids=ids, attention_mask=mask).logits
    assert_close_valid(got, expected, mask, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_check_command(kind, tmp_path, capsys):
    config = tiny_model(kind).config
    config.architectures = [{"idefics3": "Idefics3ForConditionalGeneration",
                             "smolvlm": "SmolVLMForConditionalGeneration"}[kind]]
    out = checks.check_command_passes(config, tmp_path, capsys)
    side, n = _tile(kind)
    assert "1x2 tiles + the global image" in out and f"into {side}x{side} = {n} image tokens" in out, out


@pytest.mark.parametrize("kind", KINDS)
def test_release_without_the_family_is_refused(kind, monkeypatch):
    """Every release the HF lanes test ships both families; one that does not (as seen
    through importlib) is refused with a TypeError naming the release."""
    import importlib.util

    model = tiny_model(kind)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == f"transformers.models.{kind}" else real(name, *a))
    with pytest.raises(TypeError, match=rf"model_type '{kind}'\) needs a transformers release that ships "
                                        rf"transformers.models.{kind}; transformers {transformers.__version__}"):
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
    assert not c2rope.hf.is_patched(model)


def _encoded_features(model, pixels, drop_last_tile=False):
    """{argument: features} handing the forward the image features encoded beforehand
    (`mm_encoder_outputs` from 5.24, `image_hidden_states` before), optionally without
    the last tile's tokens."""
    import inspect

    with torch.no_grad():
        out = model.model.get_image_features(pixels)
    features = getattr(out, "pooler_output", out)
    _, n = _tile(model.config.model_type)
    if drop_last_tile:
        features = list(features[:-1]) + [features[-1][:-n]] if isinstance(features, (list, tuple)) \
            else features[:-1]
    if "mm_encoder_outputs" in inspect.signature(type(model).forward).parameters:
        out = copy.copy(out)
        out.pooler_output = features
        return {"mm_encoder_outputs": {"image": out}}
    if isinstance(features, (list, tuple)):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    return {"image_hidden_states": features}


@pytest.mark.parametrize("kind", KINDS)
def test_features_encoded_beforehand(kind):
    """Image features handed over already encoded are placed like pixels; features that
    hold fewer tiles than the image tokens are refused."""
    model = tiny_model(kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, pixels = two_rows(kind)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        got = model(input_ids=ids, attention_mask=mask, **_encoded_features(model, pixels)).logits
        assert_close_valid(got, expected, mask, atol=1e-10, rtol=1e-10)
        with pytest.raises(ValueError, match=r"hold 7 tile\(s\) of image tokens .* encoded image features hold 6 "):
            model(input_ids=ids, attention_mask=mask, **_encoded_features(model, pixels, drop_last_tile=True))
