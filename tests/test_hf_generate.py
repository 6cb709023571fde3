"""generate() on patched transformers 5.x models: decode steps continue the temporal
index (raster and concentric), left padding, greedy tokens identical with and without
the KV cache, cached decode logits equal to a full recompute."""
import pytest
import torch

from test_hf_common import IMG, VOCAB, batch_with_images, cache_kwargs, cache_of, causal_lm  # noqa: F401  (skips < 4.57)

import c2rope

GRIDS = [(3, 4), (2, 2), (3, 3)]
CONFIGS = {
    "seed_defaults": c2rope.C2RoPEConfig(),
    "paper_code": c2rope.C2RoPEConfig.paper_code(),  # concentric: 12 tokens take 2 slots
    "concentric_outward": c2rope.C2RoPEConfig(temporal="concentric"),
    "shared_high": c2rope.C2RoPEConfig(temporal="shared", spatial_band="high"),  # 3x4 takes 4 slots
    "shared_spread_causal": c2rope.C2RoPEConfig(temporal="shared", spatial_band="spread", mask="causal"),
}


def _prompt():
    return batch_with_images(2, 30, [[(3, 3, 4)], [(2, 2, 2), (10, 3, 3)]], left_pad=(0, 4))


@pytest.mark.parametrize("implementation", ("eager", "sdpa"))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_tokens_same_with_and_without_cache(name, implementation):
    model = causal_lm("llama", implementation)
    c2rope.patch_model(model, CONFIGS[name], image_token_id=IMG, grid=GRIDS)
    ids, mask, _ = _prompt()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
              suppress_tokens=[IMG])
    cached = model.generate(**kw, use_cache=True)
    uncached = model.generate(**kw, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_generated_image_token_is_text(name):
    """A decoding step whose token is the image token id (the model generated it) reads
    it as text, as the model embeds it: generate() decodes on, and the next step's logits
    are those of one uncached forward in which a text id with the same embedding stands in
    for it."""
    model = causal_lm("llama")
    c2rope.patch_model(model, CONFIGS[name], image_token_id=IMG, grid=GRIDS)
    ids, mask, _ = _prompt()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True,
                             begin_suppress_tokens=[t for t in range(VOCAB) if t != IMG])
    step = out.sequences[:, -2:-1]
    assert bool((step == IMG).all())
    standin = VOCAB - 2  # prompt text ids are below it
    assert not bool((ids == standin).any())
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[standin] = embeddings[IMG]
        want = model(input_ids=torch.cat([ids, torch.full_like(step, standin)], dim=1),
                     attention_mask=torch.cat([mask, torch.ones_like(step)], dim=1)).logits[:, -1]
    torch.testing.assert_close(out.logits[1], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_decode_logits_equal_full_recompute(name):
    config = CONFIGS[name]
    model = causal_lm("llama", "sdpa")
    c2rope.patch_model(model, config, image_token_id=IMG, grid=GRIDS)
    ids, mask, _ = _prompt()
    new = torch.randint(1, IMG - 1, (2, 3))
    full_ids = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    with torch.no_grad():
        full = model(input_ids=full_ids, attention_mask=full_mask).logits
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache, steps = cache_of(out), []
        for t in range(new.shape[1]):  # one token at a time, as generate() does
            step = model(input_ids=new[:, t:t + 1], attention_mask=full_mask[:, :ids.shape[1] + t + 1],
                         use_cache=True, **cache_kwargs(model, cache))
            cache = cache_of(step)
            steps.append(step.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, ids.shape[1]:], atol=1e-5, rtol=1e-5)


def _prompt_and_decode_positions(config):
    """The triplets the rotary adapter receives for the prompt and for one decode step
    after it (KV cache), plus next_temporal_index of the prompt as float32."""
    model = causal_lm("llama", "sdpa")
    c2rope.patch_model(model, config, image_token_id=IMG, grid=GRIDS)
    ids, mask, spans = _prompt()
    adapter = model.model.rotary_emb
    seen = []
    original = adapter.rope.forward
    adapter.rope.forward = lambda x, positions: (seen.append(positions.clone()), original(x, positions))[1]
    with torch.no_grad():
        cache = cache_of(model(input_ids=ids, attention_mask=mask, use_cache=True))
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        model(input_ids=torch.full((2, 1), 5), attention_mask=step_mask, **cache_kwargs(model, cache))
    layout = c2rope.VisualLayout.from_spans(spans, ids.shape[1], attention_mask=mask)
    expected_m = c2rope.next_temporal_index(layout, config).to(torch.float32)
    assert seen[-1].shape == (2, 1, 3)
    return seen[0], seen[-1], expected_m, mask.bool()


def test_decode_positions_continue_after_concentric_image():
    # The new token's m must be next_temporal_index of the prompt (fewer slots than
    # tokens when concentric).
    _, decode, expected_m, _ = _prompt_and_decode_positions(c2rope.C2RoPEConfig.paper_code())
    torch.testing.assert_close(decode[:, 0, 0], expected_m)
    # rows: 30 - padding tokens, minus what the concentric images save
    saved = torch.tensor([12 - 3, (4 - 1) + (9 - 2)], dtype=torch.float32)  # 3x4: 3 rings, 2x2: 1, 3x3: 2
    torch.testing.assert_close(expected_m, torch.tensor([30.0, 26.0]) - saved)
    # text spatial components follow m (text_spatial="temporal")
    torch.testing.assert_close(decode[:, 0, 1], expected_m)


def test_decode_positions_continue_after_shared_image():
    # One m per image, at its centre: the first decoded token comes right after the
    # largest component used inside the last image, and is plain text (m, m, m).
    config = c2rope.C2RoPEConfig(temporal="shared", spatial_band="spread")
    prompt, decode, expected, valid = _prompt_and_decode_positions(config)
    torch.testing.assert_close(decode[:, 0], expected.unsqueeze(-1).expand(2, 3), rtol=0, atol=0)
    # rows: 30 tokens minus padding, minus what the shared images save: an HxW image
    # takes max(H, W) slots (3x4: 4, 2x2: 2, 3x3: 3)
    torch.testing.assert_close(expected, torch.tensor([30.0 - (12 - 4), 26.0 - (4 - 2) - (9 - 3)]))
    largest = prompt[..., 1:].masked_fill(~valid.unsqueeze(-1), -1).amax((1, 2))
    assert torch.equal(decode[:, 0, 0], largest + 1)


def test_generate_text_only_matches_unpatched():
    model = causal_lm("qwen2", "sdpa")
    ids, mask, _ = batch_with_images(2, 12, [], left_pad=(3, 0))
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
              suppress_tokens=[IMG])
    expected = model.generate(**kw)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG)
    torch.testing.assert_close(model.generate(**kw), expected, rtol=0, atol=0)
