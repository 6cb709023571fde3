"""Packed (padding-free) rows on tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models:
three samples with images (and a video) back to back in one row give every sample the
logits and gradients it gets alone (fp32, 1e-5), for C2RoPE (both frequency options,
the frame axis) and Circle-RoPE (with AGE), whichever way the row says where its
samples start: 2-D position_ids restarting (DataCollatorWithFlattening), transformers'
own 4-row form (a text row, then t/h/w as the unpatched get_rope_index gives them per
sample), or cu_seq_lens_q / cu_seq_lens_k."""

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig, CircleRoPEConfig

transformers = pytest.importorskip("transformers")
if transformers.__version__.startswith(("4.", "5.0.")):
    pytest.skip("Qwen-VL packed rows are tested on transformers >= 5.1 (mm_token_type_ids)",
                allow_module_level=True)
from qwen_tiny import KINDS, make_model, make_prompt  # noqa: E402

PATCHES = {
    "c2rope": (C2RoPEConfig(), None),
    "c2rope-freq": (C2RoPEConfig(mask="inward", temporal="shared"), {"frequencies": "c2rope"}),
    "c2rope-frames": (C2RoPEConfig(), {"frame_axis": "separate"}),
    "circle": (CircleRoPEConfig(), None),
    "circle-age": (CircleRoPEConfig(age_strategy="alternate"), None),
}
FORMS = ("2d", "4row", "cu")


def _samples(kind):
    # Sample 0 has a video (make_prompt puts one in row 0), the others maybe.
    return [make_prompt(kind, batch=1, videos=True, dtype=torch.float64)[0] for _ in range(3)]


def _pack(samples, form, own_rows):
    """One packed row of `samples`; own_rows(sample) = the unpatched [3, 1, L] rows."""
    packed = {k: torch.cat([s[k] for s in samples], dim=1) for k in ("input_ids", "mm_token_type_ids")}
    for grid, pixels in (("image_grid_thw", "pixel_values"), ("video_grid_thw", "pixel_values_videos")):
        present = [s for s in samples if grid in s]
        if present:
            packed[grid] = torch.cat([s[grid] for s in present])
            packed[pixels] = torch.cat([s[pixels] for s in present])
    lengths = [s["input_ids"].shape[1] for s in samples]
    text = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    if form == "2d":
        packed["position_ids"] = text
    elif form == "4row":
        rows = torch.cat([own_rows(s) for s in samples], dim=2)
        packed["position_ids"] = torch.cat([text.unsqueeze(0), rows.to(text.dtype)], dim=0)
    else:
        cu = torch.tensor([0] + lengths).cumsum(0)
        packed.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    return packed, lengths


def _loss(logits, ids):
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")


def _unpatched_rows(model):
    def rows(sample):
        args = {k: sample[k] for k in ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw")
                if k in sample}
        return model.model.get_rope_index(**args)[0]
    return rows


def _run_alone_and_packed(model, samples, packed, lengths, use_cache=False, tolerance=1e-6):
    model.zero_grad(set_to_none=True)
    alone = []
    for sample in samples:
        logits = model(**sample, use_cache=False).logits
        _loss(logits, sample["input_ids"]).backward()
        alone.append(logits.detach())
    alone_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    logits = model(**packed, use_cache=use_cache).logits
    total, start = 0, 0
    for sample, expected, n in zip(samples, alone, lengths):
        got = logits[:, start:start + n]
        torch.testing.assert_close(got.detach(), expected, atol=tolerance, rtol=tolerance)
        total = total + _loss(got, sample["input_ids"])
        start += n
    total.backward()
    for name, param in model.named_parameters():
        if name in alone_grads:
            # Sums over a different number of tokens (the vision tower sees every image of the
            # row at once): compared at `tolerance` of the gradient's own scale. Float64, since in
            # float32 that order alone moved a vision merger gradient by 2.7e-5 of its scale;
            # 1e-6, since transformers computes some tables in float32 even for a float64
            # model (logits 7e-8 to 1.9e-7 apart, unpatched as patched, in 30 draws).
            expected = alone_grads[name]
            diff = (param.grad - expected).abs().max().item()
            assert diff <= tolerance * max(1.0, expected.abs().max().item()), (name, diff)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("patch", list(PATCHES))
@pytest.mark.parametrize("kind", KINDS)
def test_packed_row_equals_each_sample_alone(kind, patch, form):
    config, options = PATCHES[patch]
    model = make_model(kind, "sdpa", dtype=torch.float64)
    samples = _samples(kind)
    packed, lengths = _pack(samples, form, _unpatched_rows(model))
    c2rope.patch_model(model, config, options=options) if options else c2rope.patch_model(model, config)
    _run_alone_and_packed(model, samples, packed, lengths)


@pytest.mark.parametrize("kind", KINDS)
def test_eager_packed_and_unpatched_reference(kind):
    """The unpatched model is exact on its own 4-row form without a cache (the harness
    is right), and the patched model is exact on eager too."""
    model = make_model(kind, "eager", dtype=torch.float64)
    samples = _samples(kind)
    packed, lengths = _pack(samples, "4row", _unpatched_rows(model))
    _run_alone_and_packed(model, samples, packed, lengths)
    c2rope.patch_model(model, C2RoPEConfig())
    _run_alone_and_packed(model, samples, packed, lengths)
    # with a cache (the default of a plain forward), where transformers' own packed mask is off
    _run_alone_and_packed(model, samples, packed, lengths, use_cache=True)


@pytest.mark.parametrize("patch", ["c2rope", "circle"])
def test_packed_refusals(patch):
    config, _ = PATCHES[patch]
    model = make_model("qwen2_5_vl", "sdpa", dtype=torch.float64)
    c2rope.patch_model(model, config)
    samples = _samples("qwen2_5_vl")
    packed, lengths = _pack(samples, "2d", None)
    # a sample boundary inside the first video frame (at least 2 tokens; sample 0 has a
    # video): each sample alone cannot be placed
    image = int((packed["mm_token_type_ids"][0] == 2).nonzero()[0]) + 1
    cut = packed["position_ids"].clone()
    cut[0, image:] = torch.arange(cut.shape[1] - image)
    with pytest.raises(ValueError, match="crosses a packed sample|different packed samples"):
        model(**dict(packed, position_ids=cut), use_cache=False)
    cu = torch.tensor([0] + lengths).cumsum(0)
    bad = cu[[0, 2, 1, 3]]  # [0, 7, 1, 13]-like: decreasing
    with pytest.raises(ValueError, match="cu_seq_lens_q must never decrease"):
        model(**{k: v for k, v in packed.items() if k != "position_ids"}, cu_seq_lens_q=bad, cu_seq_lens_k=bad,
              use_cache=False)
    no_types = {k: v for k, v in packed.items() if k not in ("input_ids", "mm_token_type_ids")}
    with pytest.raises(ValueError, match="needs mm_token_type_ids"):
        model(inputs_embeds=model.get_input_embeddings()(packed["input_ids"]), use_cache=False, **no_types)
    with pytest.raises(ValueError, match="disagree"):
        model(**dict(packed, position_ids=torch.arange(sum(lengths)).unsqueeze(0)), cu_seq_lens_q=cu,
              cu_seq_lens_k=cu, use_cache=False)
