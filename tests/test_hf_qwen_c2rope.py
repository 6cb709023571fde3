"""C2RoPE on tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models (c2rope.hf.qwen_c2rope),
images and videos, in float64 so a wrong position or mask entry anywhere shows.

The reference is the *unpatched* model given, explicitly, the triplets of
c2rope.reference.position_ids_ref (token by token from the spans the prompt builder
recorded) as its (t, h, w) = (m, y, x) position_ids and the 4-D mask of
c2rope.reference.chebyshev_mask_ref; for options={"frequencies": "c2rope"} every layer is
also handed cos/sin from c2rope.reference.cos_sin_ref on the config's axis table, and for
options={"frame_axis": "separate"} on that table (or the model's sections) with the slower
half of m's slots given to the frame axis, computed here token by token."""
import random

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig
from c2rope.reference import chebyshev_mask_ref, cos_sin_ref, position_ids_ref
from c2rope.reference.positions import _ring_ranks

transformers = pytest.importorskip("transformers")
from qwen_tiny import (ALL_KINDS, KINDS, LAYERS, SUPPRESS, TIMESTAMPED, VIDEO_ID, cache_tolerance,  # noqa: E402
                       make_model, make_prompt, text_prompt)

CONFIGS = [C2RoPEConfig(), C2RoPEConfig.paper_code(), C2RoPEConfig(mask="inward", coords="merged")]


def _image_tensors(spans, seq):
    batch = len(spans)
    image_id = torch.full((batch, seq), -1, dtype=torch.long)
    ring = torch.full((batch, seq), -1, dtype=torch.long)
    for b, row in enumerate(spans):
        for index, (start, h, w) in enumerate(row):
            ranks, _ = _ring_ranks(h, w)
            for k in range(h * w):
                image_id[b, start + k] = index
                ring[b, start + k] = ranks[divmod(k, w)]
    return image_id, ring


def model_axis_table(model):
    """The model's own M-RoPE split in triplet axes (m, x, y) = (0, 1, 2), from the
    tiny configs' mrope_section [2, 3, 3] (t, h, w): chunked on Qwen2/2.5-VL,
    interleaved (h at k % 3 == 1, w at k % 3 == 2, inside 3 * section) on Qwen3-VL."""
    t, h, w = 2, 3, 3
    if model.config.model_type not in TIMESTAMPED:  # the interleaved kinds
        return [0] * t + [2] * h + [1] * w
    return [2 if k % 3 == 1 and k < 3 * h else 1 if k % 3 == 2 and k < 3 * w else 0 for k in range(t + h + w)]


def video_frames(inputs, spans):
    """Per row, the videos of a prompt from make_prompt (one at most), each as the
    (start, tokens) of its frames: the spans that hold video tokens."""
    return [[frames] if frames else [] for frames in (
        [(start, h * w) for start, h, w in row if inputs["input_ids"][b, start] == VIDEO_ID]
        for b, row in enumerate(spans))]


def frame_rows(videos, triplets):
    """The frame axis of docs/qwen.md, token by token: a frame k of T gets the mean m of
    its video's tokens + k - (T - 1) / 2; every other token its m."""
    frame = triplets[..., 0].double().clone()
    for b, row in enumerate(videos):
        for frames in row:
            tokens = torch.cat([torch.arange(start, start + n) for start, n in frames])
            mean = triplets[b, tokens, 0].double().mean()
            for k, (start, n) in enumerate(frames):
                frame[b, start:start + n] = mean + k - (len(frames) - 1) / 2
    return frame.float()


def with_frame_axis(table):
    """The slower half of the m slots carry the frame axis (axis 3)."""
    slots = [k for k, axis in enumerate(table) if axis == 0]
    return [3 if k in slots[len(slots) - len(slots) // 2:] else axis for k, axis in enumerate(table)]


def reference_logits(model, inputs, spans, config, frequencies="model", frame_axis="temporal", videos=None,
                     float64_tables=False):
    """videos: per row, each video's frames as (start, tokens) (default `video_frames`).
    float64_tables: hand every layer float64 reference cos/sin even where the model's own
    rotary module could compute them (to compare two references bit for bit)."""
    valid = inputs["attention_mask"].bool()
    seq = valid.shape[1]
    triplets = position_ids_ref(spans, valid, config)  # [B, S, 3] (m, x, y)
    position_ids = triplets[..., [0, 2, 1]].permute(2, 0, 1)  # rows (t, h, w) = (m, y, x)
    image_id, ring = _image_tensors(spans, seq)
    mask = chebyshev_mask_ref(valid, image_id, ring, mode=config.mask)
    if model.config._attn_implementation == "eager":  # eager adds the mask to the scores
        mask = chebyshev_mask_ref(valid, image_id, ring, mode=config.mask, dtype=model.dtype)
    text = model.model.language_model
    if "linear_attention" in (getattr(text.config, "layer_types", None) or ()):  # Qwen3.5: a mask per layer type
        mask = {"full_attention": mask, "linear_attention": inputs["attention_mask"]}
    handles = []
    if frequencies == "c2rope" or frame_axis == "separate" or float64_tables:
        rotary = text.rotary_emb
        dim = 2 * rotary.inv_freq.shape[-1]
        table = config.axis_table(dim) if frequencies == "c2rope" else model_axis_table(model)
        positions = triplets
        if frame_axis == "separate":
            table = with_frame_axis(table)
            videos = video_frames(inputs, spans) if videos is None else videos
            positions = torch.cat([triplets, frame_rows(videos, triplets).unsqueeze(-1)], dim=-1)
        cos, sin = cos_sin_ref(positions, rotary.inv_freq, table, rotary.attention_scaling, torch.float64)
        probe, _ = rotary(cos, torch.zeros(3, 1, 1, dtype=torch.long))
        if probe.dim() == 4:  # releases that split the sections inside attention
            cos, sin = cos.expand(3, -1, -1, -1), sin.expand(3, -1, -1, -1)

        def hook(module, args, kwargs):
            kwargs["position_embeddings"] = (cos, sin)
            return args, kwargs
        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in text.layers]
    arguments = {k: v for k, v in inputs.items() if k != "attention_mask"}
    try:
        with torch.no_grad():
            return model(**arguments, position_ids=position_ids, attention_mask=mask).logits
    finally:
        for handle in handles:
            handle.remove()
        model.model.rope_deltas = None


def _valid_rows(logits, inputs):
    return logits[inputs["attention_mask"].bool()]


@pytest.mark.parametrize("frequencies", ["model", "c2rope"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_prefill_matches_reference(kind, frequencies):
    model = make_model(kind)
    config = random.choice(CONFIGS)
    frame_axis = random.choice(["temporal", "separate"])
    inputs, spans = make_prompt(kind)
    want = reference_logits(model, inputs, spans, config, frequencies, frame_axis)
    with torch.no_grad():
        plain = model(**inputs).logits
    c2rope.patch_model(model, config, options={"frequencies": frequencies, "frame_axis": frame_axis})
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(_valid_rows(got, inputs), _valid_rows(want, inputs), rtol=1e-9, atol=1e-9)
    assert (_valid_rows(got, inputs) - _valid_rows(plain, inputs)).abs().max() > 1e-3  # the patch matters
    c2rope.unpatch_model(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)


@pytest.mark.parametrize("implementation", ["eager", "flex_attention"])
def test_other_attention_implementations(implementation):
    kind = random.choice(KINDS)
    model = make_model(kind, dtype=torch.float32)
    config = random.choice(CONFIGS)
    inputs, spans = make_prompt(kind, dtype=torch.float32)
    want = reference_logits(model, inputs, spans, config)  # sdpa with a 4-D mask
    text_config = model.model.language_model.config
    if implementation == "flex_attention" and not type(model)._supports_flex_attn:
        # transformers refuses flex_attention for Qwen-VL in set_attn_implementation; the
        # text model itself runs it, so the BlockMask path is tested there.
        text_config._attn_implementation = implementation
    else:
        model.set_attn_implementation(implementation)
    c2rope.patch_model(model, config)
    seen = []
    model.model.language_model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(type(kwargs.get("attention_mask")).__name__), with_kwargs=True)
    if implementation == "flex_attention" and not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flex_attention with images is not supported on CPU"):
            model(**inputs)  # refused on CPU: compiled CPU flex gave NaN (docs/hf.md)
        return
    with torch.no_grad():
        got = model(**inputs).logits
    assert seen == ["BlockMask" if implementation == "flex_attention" else "Tensor"]
    torch.testing.assert_close(_valid_rows(got, inputs), _valid_rows(want, inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("frequencies", ["model", "c2rope"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_text_only_logits_unchanged(kind, frequencies):
    model = make_model(kind)
    ids, mask = text_prompt()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    want_tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    c2rope.patch_model(model, C2RoPEConfig(), options={"frequencies": frequencies,
                                                       "frame_axis": random.choice(["temporal", "separate"])})
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        model(**make_prompt(kind)[0])  # an image prompt in between changes nothing for text
        again = model(input_ids=ids, attention_mask=mask).logits
    if frequencies == "model":  # the model's own rotary and masks: bit for bit
        assert torch.equal(got, want) and torch.equal(again, want)
    else:  # c2rope's cos/sin kernel on the same float32 inv_freq: plain RoPE at (p, p, p), to float32 rounding
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(again, want, rtol=0, atol=1e-6)
    got_tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(got_tokens, want_tokens)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_generate_cached_equals_uncached_and_reference(kind):
    model = make_model(kind)
    config = random.choice(CONFIGS)
    frequencies = random.choice(["model", "c2rope"])
    frame_axis = random.choice(["temporal", "separate"])
    inputs, spans = make_prompt(kind, batch=3)
    c2rope.patch_model(model, config, options={"frequencies": frequencies, "frame_axis": frame_axis})
    runs = {}
    for use_cache in (True, False):
        runs[use_cache] = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=use_cache,
                                         return_dict_in_generate=True, output_logits=True,
                                         suppress_tokens=SUPPRESS)
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    for cached, uncached in zip(runs[True].logits, runs[False].logits):
        torch.testing.assert_close(cached, uncached, rtol=1e-6 * (kind in KINDS), atol=cache_tolerance(kind))
    # Every step's logits equal the reference on the whole generated sequence.
    sequences = runs[True].sequences
    seq = inputs["input_ids"].shape[1]
    new = sequences[:, seq:]
    full = dict(inputs, input_ids=sequences,
                attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(new)], dim=1))
    if "mm_token_type_ids" in inputs:
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], dim=1)
    c2rope.unpatch_model(model)
    want = reference_logits(model, full, spans, config, frequencies, frame_axis)
    for step, logits in enumerate(runs[True].logits):
        # float32 logits from generate(): a wrong position or mask is off by O(1).
        torch.testing.assert_close(logits.double(), want[:, seq - 1 + step], rtol=1e-4, atol=1e-4)


def test_training_backward_matches_reference():
    kind = random.choice(KINDS)
    model = make_model(kind)
    config = C2RoPEConfig()
    inputs, spans = make_prompt(kind)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    reference = make_model(kind)
    reference.load_state_dict(model.state_dict())
    reference.train()
    c2rope.patch_model(model, config)
    model.train()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    valid = inputs["attention_mask"].bool()
    triplets = position_ids_ref(spans, valid, config)
    image_id, ring = _image_tensors(spans, valid.shape[1])
    arguments = {k: v for k, v in inputs.items() if k != "attention_mask"}
    want = reference(**arguments, labels=labels, position_ids=triplets[..., [0, 2, 1]].permute(2, 0, 1),
                     attention_mask=chebyshev_mask_ref(valid, image_id, ring)).loss
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-9, atol=1e-9)
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-7, atol=1e-9)
    q = model.model.language_model.layers[LAYERS - 1].self_attn.q_proj.weight.grad
    assert q is not None and q.abs().sum() > 0


def test_inner_model_is_patched_too():
    # Qwen*VLModel (what *ForConditionalGeneration wraps) on its own.
    kind = random.choice(KINDS)
    model = make_model(kind)
    inputs, spans = make_prompt(kind)
    config = C2RoPEConfig()
    want = reference_logits(model, inputs, spans, config)
    c2rope.patch_model(model.model, config)
    with torch.no_grad():
        got = model.lm_head(model.model(**inputs).last_hidden_state)
    torch.testing.assert_close(_valid_rows(got, inputs), _valid_rows(want, inputs), rtol=1e-9, atol=1e-9)


def test_bad_arguments():
    model = make_model(random.choice(KINDS))
    with pytest.raises(TypeError, match="unknown key"):
        c2rope.patch_model(model, C2RoPEConfig(), options={"frequency": "model"})
    with pytest.raises(ValueError, match="frequencies"):
        c2rope.patch_model(model, C2RoPEConfig(), options={"frequencies": "mine"})
    with pytest.raises(TypeError, match="options must be a dict"):
        c2rope.patch_model(model, C2RoPEConfig(), options=["frequencies"])
    with pytest.raises(ValueError, match="text_spatial"):
        c2rope.patch_model(model, C2RoPEConfig(text_spatial="zero"))
    with pytest.raises(ValueError, match="frame_axis"):
        c2rope.patch_model(model, C2RoPEConfig(), options={"frame_axis": "time"})
    narrow = make_model("qwen2_vl", section=(1, 4, 3))  # one temporal slot: no room for a frame axis
    with pytest.raises(ValueError, match=r"options\['frame_axis'\]='separate' needs at least 2"):
        c2rope.patch_model(narrow, C2RoPEConfig(), options={"frame_axis": "separate"})
    assert not c2rope.hf.is_patched(narrow)
    with pytest.raises(ValueError, match="d_spatial"):  # 16-dim heads: a split that does not fit
        c2rope.patch_model(model, C2RoPEConfig(d_temporal=10, d_spatial=6), options={"frequencies": "c2rope"})
    assert not c2rope.hf.is_patched(model)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(TypeError, match="takes no options"):
        c2rope.patch_model(llama, C2RoPEConfig(), options={"frequencies": "model"})
    c2rope.patch_model(model, C2RoPEConfig())
    inputs, _ = make_prompt(model.config.model_type)
    inputs["image_grid_thw"] = inputs["image_grid_thw"][:-1]
    with pytest.raises(ValueError, match="image_grid_thw"):
        model(**inputs)
