"""Checks that every image family's HF tests run the same way (InternVL, LLaVA-OneVision-1.5,
LLaVA-NeXT / OneVision, Idefics3 / SmolVLM): each takes a tiny model the calling test
built and a prompt it drew, as (ids, attention_mask, reference spans, forward kwargs with
the pixels), and asserts. The tolerances are the caller's: they depend on the model's
dtype and on whether a reference is involved.

Not a test file (no test_ prefix): pytest collects nothing here."""
import copy

import pytest
import torch

from test_hf_common import IMG, VOCAB, assert_close_valid, cache_kwargs, cache_of, find_decoder, reference_logits

import c2rope


def matches_reference_and_moves(model, config, ids, mask, spans, kwargs, atol, rtol):
    """The patched model gives the reference's logits on real tokens, and those differ
    from the unpatched model's (the images really moved)."""
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    c2rope.patch_model(model, config)  # verify=True: the probe forward runs
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    assert_close_valid(got, expected, mask, atol=atol, rtol=rtol)
    moved = (got - plain)[mask.bool()]
    # finite entries: transformers' own float64 eager mask turns left-padded rows into NaN, unpatched
    assert moved[moved.isfinite()].abs().max() > 1e-4


def bare_model_matches_reference(model, config, ids, mask, spans, kwargs, atol, rtol):
    """The inner model (no LM head) patched on its own gives the reference's logits
    through the unpatched LM head."""
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    c2rope.patch_model(model.model, config)
    with torch.no_grad():
        got = model.lm_head(model.model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state)
    assert_close_valid(got, expected, mask, atol=atol, rtol=rtol)


def text_only_is_exactly_unpatched(model, config, ids, mask):
    """A prompt without images gives the unpatched logits bit for bit (a float32 model:
    in float64 c2rope's text tables round differently, ~1e-7)."""
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        c2rope.patch_model(model, config)
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, expected)


def generate_cached_equals_uncached(model, ids, mask, kwargs, suppress, beams, pad, alone_kwargs, atol, rtol):
    """On a patched model, generate() gives the same tokens with and without the KV cache
    (two rows, `beams` beams each), and row 1, left-padded by `pad`, computes what it
    computes alone (fed `alone_kwargs`: its own images)."""
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                  suppress_tokens=suppress, num_beams=beams, num_return_sequences=beams, **kwargs)
    cached = model.generate(**common)
    assert cached.shape[0] == 2 * beams
    assert torch.equal(cached, model.generate(**common, use_cache=False))
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, **kwargs).logits[1, pad:]
        alone = model(input_ids=ids[1:, pad:], attention_mask=mask[1:, pad:], **alone_kwargs).logits[0]
    torch.testing.assert_close(batched, alone, atol=atol, rtol=rtol)


def image_after_a_cached_prefix(model, ids, mask, kwargs, atol, rtol, prefix=4):
    """An image in a chunk that follows a KV cache of the first `prefix` tokens is placed
    after the cached tokens: the chunk's logits are those of one full forward."""
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, **kwargs).logits
        cached = model(input_ids=ids[:, :prefix], attention_mask=mask[:, :prefix], use_cache=True)
        rest = model(input_ids=ids[:, prefix:], attention_mask=mask, **cache_kwargs(model, cache_of(cached)),
                     **kwargs).logits
    torch.testing.assert_close(rest, full[:, prefix:], atol=atol, rtol=rtol)


def _decoder_inputs(model, decoder, **forward_kwargs):
    """({inputs_embeds, and per_layer_inputs where the model makes them (Gemma 4)} that
    the model hands its decoder, the forward's output)."""
    seen = {}

    def grab(module, args, kwargs):
        seen.update((name, kwargs[name]) for name in ("inputs_embeds", "per_layer_inputs")
                    if kwargs.get(name) is not None)

    handle = decoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**forward_kwargs)
    finally:
        handle.remove()
    return seen, out


def step_embeddings(model, prompt, step, grown_mask, decoder=None):
    """The embeddings `model` hands its decoder for the `prompt` (its forward kwargs,
    images spliced in) and then, through the cache, for the one-token `step`, joined
    along the sequence: what the reference is fed in place of ids the model would read
    differently uncached. `decoder`: where there is more than one (default find_decoder)."""
    decoder = decoder or find_decoder(model)
    first, out = _decoder_inputs(model, decoder, **prompt, use_cache=True)
    second, _ = _decoder_inputs(model, decoder, input_ids=step, attention_mask=grown_mask, use_cache=True,
                                **cache_kwargs(model, cache_of(out)))
    return {name: torch.cat([first[name], second[name]], dim=1) for name in first}


def generated_image_token_is_text(model, config, ids, mask, spans, kwargs, image_token, atol, rtol):
    """A decoding step whose token is the image token id (a model generated it) is text,
    as the unpatched model embeds it there: its logits are the reference's over the
    prompt's embeddings followed by that token's, with only the prompt's images, and
    generate() decodes on through it."""
    unpatched = copy.deepcopy(model)
    step = torch.full((ids.shape[0], 1), image_token)
    grown = torch.cat([mask, torch.ones_like(step)], dim=1)
    embeds = step_embeddings(unpatched, dict(input_ids=ids, attention_mask=mask, **kwargs), step, grown)
    want = reference_logits(unpatched, config, torch.cat([ids, step], dim=1), grown, spans, **embeds)[:, -1]
    c2rope.patch_model(model, config)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
        got = model(input_ids=step, attention_mask=grown, use_cache=True, **cache_kwargs(model, cache_of(out)))
    torch.testing.assert_close(got.logits[:, -1], want, atol=atol, rtol=rtol)
    vocab = model.get_output_embeddings().weight.shape[0]
    forced = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
                            begin_suppress_tokens=[t for t in range(vocab) if t != image_token], **kwargs)
    assert bool((forced[:, ids.shape[1]] == image_token).all())  # forced first, then decoded on


def training_step_matches_reference(model, config, ids, mask, spans, kwargs, trained, atol, rtol, reentrant=None):
    """One training step of the patched model (with gradient checkpointing unless
    `reentrant` is None): every gradient finite, every parameter whose name holds one
    of `trained` has one, and the loss is the cross-entropy of the reference's logits.
    Returns the gradients by parameter name, for the caller's own checks."""
    reference = copy.deepcopy(model)
    labels = ids.masked_fill(mask == 0, -100)
    c2rope.patch_model(model, config)
    if reentrant is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    names = [n for n, _ in model.named_parameters() if any(part in n for part in trained)]
    assert names and all(n in grads for n in names)
    expected = reference_logits(reference, config, ids, mask, spans, **kwargs)
    # transformers' loss upcasts the logits to float32: the reference loss does the same
    shifted = torch.nn.functional.cross_entropy(expected[:, :-1].float().reshape(-1, VOCAB),
                                                labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss.detach(), shifted, atol=atol, rtol=rtol)
    return grads


def verify_and_unpatch_exact(model, config, ids, mask, kwargs):
    """verify() passes on the patched model and refuses once it is unpatched; unpatching
    gives back the unpatched logits bit for bit and every module's own forward."""
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    before = {name: vars(m).get("forward") for name, m in model.named_modules()}
    c2rope.patch_model(model, config)
    c2rope.verify(model)
    c2rope.unpatch_model(model)
    with pytest.raises(RuntimeError, match="no c2rope patch"):
        c2rope.verify(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask, **kwargs).logits, expected)
    after = {name: vars(m).get("forward") for name, m in model.named_modules()}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)


def refuses_a_grid_and_circle_rope(model, grid, match):
    """A family that derives its grids refuses a `grid=` argument (ValueError matching
    `match`) and a Circle-RoPE config, and leaves the model unpatched."""
    with pytest.raises(ValueError, match=match):
        c2rope.patch_model(model, c2rope.C2RoPEConfig(), grid=grid)
    with pytest.raises(TypeError, match="C2RoPEConfig"):
        c2rope.patch_model(model, c2rope.CircleRoPEConfig())
    assert not c2rope.hf.is_patched(model)


def refuses_an_image_missing_a_token(model, ids, mask, kwargs, match):
    """Row 0's first image token turned to text: the patched forward raises a
    ValueError matching `match` (the image's tokens no longer fit its grids)."""
    short = ids.clone()
    short[0, int((ids[0] == IMG).nonzero()[0])] = 7
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        model(input_ids=short, attention_mask=mask, **kwargs)


def packed_row_gives_each_sample_alone(model, text_ids, ids, mask, kwargs, atol, rtol):
    """A text sample and an image sample back to back in one row, position_ids
    restarting (DataCollatorWithFlattening): each computes what it computes alone."""
    n = text_ids.shape[1]
    position_ids = torch.cat([torch.arange(n), torch.arange(ids.shape[1])]).unsqueeze(0)
    with torch.no_grad():
        packed = model(input_ids=torch.cat([text_ids, ids], dim=1), position_ids=position_ids, **kwargs).logits
        alone = (model(input_ids=text_ids).logits, model(input_ids=ids, attention_mask=mask, **kwargs).logits)
    torch.testing.assert_close(packed[:, :n], alone[0], atol=atol, rtol=rtol)
    torch.testing.assert_close(packed[:, n:], alone[1], atol=atol, rtol=rtol)


def deep_copy_computes_the_same(model, ids, mask, kwargs, suppress):
    """A deep copy of a patched model gives the same logits and tokens, and unpatching
    the copy leaves the original patched."""
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
                  suppress_tokens=suppress, **kwargs)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(clone(input_ids=ids, attention_mask=mask, **kwargs).logits,
                           model(input_ids=ids, attention_mask=mask, **kwargs).logits)
    assert torch.equal(clone.generate(**common), model.generate(**common))
    c2rope.unpatch_model(clone)
    assert c2rope.hf.is_patched(model) and not c2rope.hf.is_patched(clone)


def check_command_passes(config, tmp_path, capsys):
    """`c2rope check` on a folder holding `config` passes all four checks; returns what
    it printed, for the caller's family-specific lines."""
    from c2rope.cli.check_model import main as check_main

    config.to_json_file(str(tmp_path / "config.json"))
    code = check_main(str(tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("PASS") == 4 and "FAIL" not in out and out.strip().endswith("supported"), out
    return out
