"""HF LLaVA (transformers 5.x LlavaForConditionalGeneration) patched: image positions
found from image_token_id in input_ids before they become embeddings."""
import pytest
import torch

from test_hf_common import (  # noqa: F401  (skips under transformers < 5)
    IMG, assert_close_valid, assert_text_only_unchanged, batch_with_images, cache_kwargs, cache_of, reference_logits,
    text_config, transformers,
)

import c2rope


def tiny_llava(implementation="sdpa", family="llama"):
    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        image_size=8, patch_size=2, projection_dim=32,
    )  # 4x4 patches (+ CLS, dropped by the default feature strategy)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text_config(family),
                                      image_token_id=IMG, vision_feature_layer=-1)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(implementation)
    return model


def _inputs():
    ids, mask, spans = batch_with_images(2, 36, [[(3, 4, 4)], [(2, 4, 4)]], left_pad=(0, 6))
    return ids, mask, spans, torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
def test_llava_matches_reference(implementation, name):
    config = c2rope.C2RoPEConfig() if name == "seed_defaults" else c2rope.C2RoPEConfig.paper_code()
    model = tiny_llava(implementation)
    ids, mask, spans, pixels = _inputs()
    expected = reference_logits(model, config, ids, mask, spans, pixel_values=pixels)
    c2rope.patch_model(model, config)  # image_token_id and the 4x4 grid come from the config
    state = model._c2rope_record.state
    assert state.image_token_id == IMG and state.grid == (4, 4)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert_close_valid(out, expected, mask)


def test_llava_inner_model_given_input_ids_positionally():
    """The inner model's entry hook finds input_ids passed positionally (its decoder sees
    only inputs_embeds, so the images are found there or nowhere)."""
    from c2rope.hf.introspect import parameter_names

    config = c2rope.C2RoPEConfig()
    model = tiny_llava()
    ids, mask, spans, pixels = _inputs()
    expected = reference_logits(model, config, ids, mask, spans, pixel_values=pixels)
    c2rope.patch_model(model, config)
    names = parameter_names(model.model.forward)
    given = {"input_ids": ids, "pixel_values": pixels, "attention_mask": mask}
    count = max(names.index(name) for name in given) + 1
    assert set(names[:count]) == set(given), names[:count]  # all three fit positionally
    with torch.no_grad():
        hidden = model.model(*[given[name] for name in names[:count]]).last_hidden_state
        out = model.lm_head(hidden)
    assert_close_valid(out, expected, mask)


def test_llava_text_only_matches_unpatched():
    assert_text_only_unchanged(tiny_llava("sdpa", family="mistral"))


@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
def test_llava_generate_cache_and_padding(name):
    config = c2rope.C2RoPEConfig() if name == "seed_defaults" else c2rope.C2RoPEConfig.paper_code()
    model = tiny_llava("sdpa")
    c2rope.patch_model(model, config)
    ids, mask, _, pixels = _inputs()
    # a random model could emit the image token itself (as HF's own LLaVA, a generated
    # image token would then be read as an incomplete image): suppress it
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=5, do_sample=False,
              pad_token_id=0, suppress_tokens=[IMG])
    cached = model.generate(**kw)
    torch.testing.assert_close(cached, model.generate(**kw, use_cache=False), rtol=0, atol=0)
    # the padded row generates what it generates alone, unpadded. Alone it stops at EOS
    # (a random model emits it for some seeds); in the batch the row then holds pad tokens.
    alone = model.generate(input_ids=ids[1:, 6:], attention_mask=mask[1:, 6:], pixel_values=pixels[1:],
                           max_new_tokens=5, do_sample=False, pad_token_id=0, suppress_tokens=[IMG])
    new_alone = alone[0, ids.shape[1] - 6:]
    new_batched = cached[1, ids.shape[1]:]
    assert 1 <= len(new_alone) <= 5
    torch.testing.assert_close(new_batched[:len(new_alone)], new_alone, rtol=0, atol=0)
    assert bool((new_batched[len(new_alone):] == 0).all())


@pytest.mark.parametrize("name", ["seed_defaults", "paper_code"])
def test_llava_generated_image_token_is_text(name):
    # HF's LLaVA embeds an image token id in a decoding step as text (no pixels come
    # with it); before, c2rope refused it as an incomplete image and generate() failed.
    from family_checks import generated_image_token_is_text

    config = c2rope.C2RoPEConfig() if name == "seed_defaults" else c2rope.C2RoPEConfig.paper_code()
    ids, mask, spans, pixels = _inputs()
    generated_image_token_is_text(tiny_llava("sdpa"), config, ids, mask, spans, {"pixel_values": pixels}, IMG,
                                  atol=1e-5, rtol=1e-5)


def test_llava_image_tokens_after_a_cache_without_pixels_are_refused():
    # A new turn whose pixels were dropped (4.57's generate() drops them once the cache is
    # filled) or forgotten: the model would embed its image tokens as text.
    model = tiny_llava("sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    ids, mask, _, pixels = _inputs()
    turn = torch.cat([torch.full((2, 16), IMG), torch.randint(3, 40, (2, 2))], dim=1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=True)
        grown = torch.cat([mask, torch.ones_like(turn)], dim=1)
        with pytest.raises(ValueError, match="continues a KV cache with image tokens but no pixel_values"):
            model(input_ids=turn, attention_mask=grown, **cache_kwargs(model, cache_of(out)))
        # with its pixels the turn is placed (test_image_after_a_cached_prefix of each family)
        model(input_ids=turn, attention_mask=grown, pixel_values=pixels[:1].expand(2, -1, -1, -1),
              **cache_kwargs(model, cache_of(out)))


def test_llava_unpatch_restores():
    model = tiny_llava("sdpa")
    ids, mask, _, pixels = _inputs()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        # Some releases (5.0) set instance-level forwards themselves during the first forward:
        # unpatching must give back exactly those, no more and no fewer.
        before = {name: vars(m).get("forward") for name, m in model.named_modules()}
        c2rope.patch_model(model, c2rope.C2RoPEConfig())
        c2rope.unpatch_model(model)
        got = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    after = {name: vars(m).get("forward") for name, m in model.named_modules()}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
