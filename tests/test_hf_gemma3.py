"""C2RoPE on tiny random Gemma 3 models (c2rope/hf/families/gemma), in float64.

References are independent of the patch: the UNPATCHED model (a deep copy, the same
attention implementation: the release's eager softmax runs in float32) handed
c2rope.reference's triplets as cos/sin through its rotary module (each layer type on
its own inv_freq) and an explicit dict of 4-D masks: the reference
Chebyshev mask for global layers, the same and-ed with the sliding window
(q - k < window) for sliding layers, or with image_attention="bidirectional" the
model's own masks (token_type_ids).

On a release whose Gemma 3 has two rotary modules (4.57) patch_model refuses, and that
refusal is what is tested there."""
import copy
import inspect
import random

import pytest
import torch

import c2rope
from c2rope.reference import chebyshev_mask_ref, cos_sin_ref, position_ids_ref

transformers = pytest.importorskip("transformers")
from gemma_tiny import IMG, gemma3_prompt, make_gemma3, text_prompt  # noqa: E402
from family_checks import step_embeddings  # noqa: E402

HAS_GEMMA3 = hasattr(transformers, "Gemma3ForConditionalGeneration")
# 5.x: one rotary module serves both layer types (forward(x, position_ids, layer_type))
PER_TYPE_ROTARY = HAS_GEMMA3 and "layer_type" in inspect.signature(
    transformers.models.gemma3.modeling_gemma3.Gemma3RotaryEmbedding.forward).parameters
needs_gemma3 = pytest.mark.skipif(
    not PER_TYPE_ROTARY, reason=f"transformers {transformers.__version__}: Gemma 3 with one rotary module per "
    "layer type is refused (test_release_support)")
CONFIGS = [c2rope.C2RoPEConfig(), c2rope.C2RoPEConfig.paper_code(), c2rope.C2RoPEConfig(mask="inward"),
           c2rope.C2RoPEConfig.recommended()]


def _valid(logits, inputs):
    return logits[inputs["attention_mask"].bool()]


def _additive(allowed):
    return torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)


def reference_tables(positions, inv_freq, config, scaling):
    """HF-format cos/sin of the reference triplets on one layer type's frequencies. A
    zero tail of inv_freq (partial rotary) is left out of c2rope's split and does not
    rotate (cos 1, sin 0)."""
    rotated = int((inv_freq != 0).sum())
    cos, sin = cos_sin_ref(positions, inv_freq[:rotated], config.axis_table(2 * rotated), scaling,
                           dtype=torch.float64)
    rest = inv_freq.numel() - rotated
    if rest:
        ones = torch.ones(*cos.shape[:-1], rest, dtype=cos.dtype)
        cos = torch.cat([cos[..., :rotated], ones] * 2, dim=-1)
        sin = torch.cat([sin[..., :rotated], ones * 0] * 2, dim=-1)
    return cos, sin


def reference_logits(model, config, inputs, spans, model_mask=False, **extra):
    """The unpatched model with reference positions (and masks)."""
    ref = copy.deepcopy(model)
    if c2rope.is_patched(ref):
        c2rope.unpatch_model(ref)
    text = ref.model.language_model
    rotary = text.rotary_emb
    ids, padding = inputs["input_ids"], inputs["attention_mask"]
    seq = ids.shape[1]
    layout = c2rope.VisualLayout.from_spans(spans, seq, attention_mask=padding)
    positions = position_ids_ref(spans, layout.valid, config)
    tables = {kind: reference_tables(positions, getattr(rotary, f"{kind}_inv_freq"), config,
                                     getattr(rotary, f"{kind}_attention_scaling"))
              for kind in set(text.config.layer_types)}
    rotary.forward = lambda x, position_ids, layer_type: tables[layer_type]
    arguments = dict(inputs, **extra)
    if "inputs_embeds" in extra:  # the embeddings stand for the ids, their images spliced in
        arguments.pop("input_ids")
        arguments.pop("pixel_values", None)
    if not model_mask:
        allowed = chebyshev_mask_ref(layout.valid, layout.image_id, layout.ring, mode=config.mask)
        q = torch.arange(seq)[:, None]
        k = torch.arange(seq)[None, :]
        arguments["attention_mask"] = {"full_attention": _additive(allowed),
                                       "sliding_attention": _additive(allowed & (q - k < text.config.sliding_window))}
    with torch.no_grad():
        return ref(**arguments)


def reference_loss(logits, labels):
    """Next-token cross entropy over the labels that are not -100 (the models' loss),
    computed here: a release may read the 2-D attention_mask in its loss (5.0 does), and
    the reference hands the model a dict of 4-D masks."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


def decoding_steps_match_reference(model, config, inputs, spans, suppress, type_ids):
    """Patches `model`; the logits of each greedy step of generate() (through the cache)
    are the reference's over the sequence so far, its image tokens marked in
    `inputs[type_ids]` as the release's processor marks them. Gemma 3 and Gemma 4."""
    c2rope.patch_model(model, config)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0, suppress_tokens=suppress,
                             output_logits=True, return_dict_in_generate=True)
    sequence = out.sequences[:, :-1]
    extra = sequence.shape[1] - inputs["input_ids"].shape[1]
    grown = dict(inputs, input_ids=sequence,
                 attention_mask=torch.cat([inputs["attention_mask"], torch.ones(2, extra, dtype=torch.long)], dim=1))
    grown[type_ids] = (sequence == IMG).long()
    want = reference_logits(model, config, grown, spans).logits
    steps = torch.stack(out.logits, dim=1)  # generate hands back float32 logits
    torch.testing.assert_close(steps, want[:, -steps.shape[1]:].float(), rtol=1e-6, atol=1e-6)


def generated_image_token_is_text(model, config, inputs, spans, type_ids):
    """Patches `model`; generate() forced to emit the image token id first decodes on
    through it, reading it as the unpatched model does (its text embedding, outside any
    image block): the next step's logits are the reference's over the prompt's and that
    token's embeddings, with the prompt's images only. Gemma 3 and Gemma 4."""
    unpatched = copy.deepcopy(model)
    c2rope.patch_model(model, config)
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True,
                             begin_suppress_tokens=[t for t in range(vocab) if t != IMG])
    step = out.sequences[:, -2:-1]
    assert bool((step == IMG).all())
    grown_mask = torch.cat([inputs["attention_mask"], torch.ones_like(step)], dim=1)
    # Gemma 4 also has a vision tower with layers and a rotary: name the text decoder
    embeds = step_embeddings(unpatched, inputs, step, grown_mask, decoder=unpatched.model.language_model)
    grown = dict(inputs, input_ids=torch.cat([inputs["input_ids"], step], dim=1), attention_mask=grown_mask)
    grown[type_ids] = torch.cat([inputs[type_ids], torch.zeros_like(step)], dim=1)
    want = reference_logits(unpatched, config, grown, spans, **embeds)
    torch.testing.assert_close(out.logits[1], want.logits[:, -1].float(), rtol=1e-6, atol=1e-6)


def training_step_with_gradient_checkpointing(model, config, inputs, spans):
    """One training step of `model` patched, with gradient checkpointing, against a
    patched copy without: the loss is the reference's, the two losses and all gradients
    agree, and the first training forward's check ran. Gemma 3 and Gemma 4."""
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100).masked_fill(
        inputs["input_ids"] == IMG, -100)
    want = reference_loss(reference_logits(model, config, inputs, spans).logits, labels)
    plain = copy.deepcopy(model)
    c2rope.patch_model(model, config)
    c2rope.patch_model(plain, config)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    plain.train()
    losses = []
    for m in (model, plain):
        loss = m(**inputs, labels=labels).loss
        loss.backward()
        losses.append(loss)
    close = 1e-9 if losses[0].dtype == torch.float64 else 1e-6  # 5.0 takes the loss of float32 logits
    torch.testing.assert_close(losses[0].double(), want, rtol=close, atol=close)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)
    assert model._c2rope_record.state.training_checked


@needs_gemma3
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_images_match_reference(implementation):
    model = make_gemma3(implementation)
    config = random.choice(CONFIGS)
    inputs, spans = gemma3_prompt()
    want = reference_logits(model, config, inputs, spans).logits
    unpatched = copy.deepcopy(model)
    unpatched.set_attn_implementation("sdpa")  # the release's eager mask leaves NaN in left-padded rows
    with torch.no_grad():
        plain = unpatched(**inputs).logits
    c2rope.patch_model(model, config)
    assert model._c2rope_record.state.grid == (4, 4) and model._c2rope_record.state.image_token_id == IMG
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid(got, inputs), _valid(want, inputs), rtol=1e-9, atol=1e-9)
    assert (_valid(got, inputs) - _valid(plain, inputs)).abs().max() > 1e-3  # the patch matters


@needs_gemma3
def test_bidirectional_option_keeps_the_model_mask():
    model = make_gemma3()
    config = random.choice(CONFIGS)
    inputs, spans = gemma3_prompt()
    want = reference_logits(model, config, inputs, spans, model_mask=True).logits
    c2rope.patch_model(model, config, options={"image_attention": "bidirectional"})
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid(got, inputs), _valid(want, inputs), rtol=1e-9, atol=1e-9)
    # and it differs from the Chebyshev rule
    chebyshev = reference_logits(model, config, inputs, spans).logits
    assert (_valid(got, inputs) - _valid(chebyshev, inputs)).abs().max() > 1e-3


@needs_gemma3
@pytest.mark.parametrize("option", ["chebyshev", "bidirectional"])
def test_text_only_is_exact(option):
    model = make_gemma3(random.choice(["sdpa", "eager"]))
    inputs = text_prompt()
    with torch.no_grad():
        plain = model(**inputs).logits
    c2rope.patch_model(model, random.choice(CONFIGS), options={"image_attention": option})
    with torch.no_grad():  # bit for bit (the release leaves NaN in left-padded rows: in the same places)
        torch.testing.assert_close(model(**inputs).logits, plain, rtol=0, atol=0, equal_nan=True)
        # the random model may emit the image token: a lone one is refused (not a whole image)
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0, suppress_tokens=[IMG])
    c2rope.unpatch_model(model)
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0,
                                          suppress_tokens=[IMG]), cached)


@needs_gemma3
@pytest.mark.parametrize("beams", [1, 2])
def test_generate_cached_equals_uncached(beams):
    """Left padding, prompts longer than the sliding window: the sliding layers' cache
    rolls during decoding (their keys start past the first token)."""
    model = make_gemma3()
    c2rope.patch_model(model, random.choice(CONFIGS))
    inputs, _ = gemma3_prompt()
    kw = dict(inputs, max_new_tokens=6, do_sample=False, num_beams=beams, pad_token_id=0, suppress_tokens=[IMG])
    with torch.no_grad():
        cached = model.generate(**kw)
        uncached = model.generate(**kw, use_cache=False)
    assert torch.equal(cached, uncached)


@needs_gemma3
def test_decoding_steps_match_reference():
    """Each greedy step through the cache has the logits of the reference over the
    whole sequence so far (c2rope's positions for the new tokens, text after images)."""
    inputs, spans = gemma3_prompt()
    decoding_steps_match_reference(make_gemma3(), random.choice(CONFIGS), inputs, spans, suppress=[IMG],
                                   type_ids="token_type_ids")


@needs_gemma3
def test_generated_image_token_is_text():
    inputs, spans = gemma3_prompt()
    generated_image_token_is_text(make_gemma3(), random.choice(CONFIGS), inputs, spans, type_ids="token_type_ids")


@needs_gemma3
def test_training_step_with_gradient_checkpointing():
    inputs, spans = gemma3_prompt()
    training_step_with_gradient_checkpointing(make_gemma3(), random.choice(CONFIGS), inputs, spans)


@needs_gemma3
def test_unpatch_is_exact():
    model = make_gemma3()
    inputs, _ = gemma3_prompt()
    with torch.no_grad():
        before = model(**inputs).logits
    forwards = {name: vars(m).get("forward") for name, m in model.named_modules()}
    rotary = model.model.language_model.rotary_emb
    c2rope.patch_model(model, random.choice(CONFIGS))
    c2rope.unpatch_model(model)
    assert model.model.language_model.rotary_emb is rotary
    assert {name: vars(m).get("forward") for name, m in model.named_modules()} == forwards
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


@needs_gemma3
def test_verify_catches_a_layer_without_c2rope():
    model = make_gemma3()
    c2rope.patch_model(model, random.choice(CONFIGS))
    c2rope.verify(model)
    layers = model.model.language_model.layers
    index = random.randrange(len(layers))
    del layers[index].self_attn.forward  # the class forward: HF's rotary function again
    with pytest.raises(RuntimeError, match=f"layer {index} .*never called c2rope's apply_rotary_pos_emb"):
        c2rope.verify(model)


@needs_gemma3
def test_verify_catches_the_release_rotary():
    model = make_gemma3()
    c2rope.patch_model(model, random.choice(CONFIGS))
    text = model.model.language_model
    adapter = text.rotary_emb
    text.rotary_emb = adapter.original
    with pytest.raises(RuntimeError, match="did not receive c2rope's positions"):
        c2rope.verify(model)


@needs_gemma3
def test_bad_options_are_refused():
    model = make_gemma3()
    with pytest.raises(ValueError, match="image_attention"):
        c2rope.patch_model(model, options={"image_attention": "both"})
    with pytest.raises(TypeError, match="frequencies"):
        c2rope.patch_model(model, options={"frequencies": "c2rope"})
    with pytest.raises(TypeError, match="C2RoPEConfig"):
        c2rope.patch_model(model, c2rope.CircleRoPEConfig())
    assert not c2rope.is_patched(model)


@needs_gemma3
def test_image_run_that_is_not_a_whole_grid_is_refused():
    model = make_gemma3()
    c2rope.patch_model(model)
    inputs, _ = gemma3_prompt(images_per_row=(1, 1))
    ids = inputs["input_ids"].clone()
    row = 0
    first = int((ids[row] == IMG).nonzero()[0])
    ids[row, first] = 7  # 15 image tokens left in that run
    with pytest.raises(ValueError, match="does not split into images of its grid 4x4"):
        model(input_ids=ids, attention_mask=inputs["attention_mask"])


def test_release_support():
    """Releases with one rotary module per layer type are patched; the others refused
    with a TypeError that says why."""
    if not HAS_GEMMA3:
        from c2rope.hf.families.gemma import require_release

        with pytest.raises(TypeError, match="does not"):
            require_release("gemma3")
        return
    model = make_gemma3()
    if PER_TYPE_ROTARY:
        c2rope.patch_model(model)
        assert c2rope.is_patched(model)
    else:
        with pytest.raises(TypeError, match="layer_type"):
            c2rope.patch_model(model)
        assert not c2rope.is_patched(model)


def test_rotary_without_layer_types_is_refused():
    from c2rope.hf.families.gemma.rotary import layer_type_frequencies

    class OneBase(torch.nn.Module):  # 4.57's Gemma 3: two such modules, one per base
        def __init__(self):
            super().__init__()
            self.register_buffer("inv_freq", torch.ones(4))

        def forward(self, x, position_ids):
            return x, x

    with pytest.raises(TypeError, match="does not take a layer_type"):
        layer_type_frequencies(OneBase())
