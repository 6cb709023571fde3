"""Packed (padding-free) rows with images: three samples in one row give, for every
sample, the logits and gradients of that sample run alone."""
import copy

import pytest
import torch

from test_hf_common import IMG, batch_with_images, causal_lm, in_fresh_process  # noqa: F401  (skips < 4.57)

import c2rope

# (length, image spans relative to the sample's first token, as (start, H, W))
SAMPLES = [(14, [(2, 2, 3)]), (21, [(3, 3, 3), (13, 2, 2)]), (11, [])]
GRIDS = [(2, 3), (3, 3), (2, 2)]


def _samples():
    out = []
    for length, spans in SAMPLES:
        ids, _, _ = batch_with_images(1, length, [spans])
        out.append(ids)
    return out


def _packed(samples):
    ids = torch.cat(samples, dim=1)
    position_ids = torch.cat([torch.arange(s.shape[1]) for s in samples]).unsqueeze(0)
    lengths = torch.tensor([s.shape[1] for s in samples])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return ids, position_ids, cu


def _loss(logits, ids):
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum")


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
@pytest.mark.parametrize("mask", ["outward", "causal"])
def test_packed_row_equals_each_sample_alone(implementation, mask, request):
    if implementation == "flex_attention" and in_fresh_process(request):
        return
    model = causal_lm("llama", implementation)
    samples = _samples()
    ids, position_ids, _ = _packed(samples)
    flex = implementation == "flex_attention"
    if flex:
        # CPU flex_attention (torch 2.13): the first compiled call of a process is wrong and a
        # second sequence length recompiles with dynamic shapes into wrong values or a C++
        # codegen error, both without c2rope (docs/hf.md). So: a fresh process, a warm-up at
        # the packed length, only that length under flex, the alone reference from sdpa. Flex has no CPU
        # backward either: forward only there.
        with torch.no_grad():
            model(input_ids=torch.randint(1, IMG - 1, ids.shape), position_ids=position_ids)
    config = c2rope.C2RoPEConfig(mask=mask)
    alone_model = copy.deepcopy(model)
    if flex:
        alone_model.set_attn_implementation("sdpa")
    c2rope.patch_model(model, config, image_token_id=IMG, grid=GRIDS)
    c2rope.patch_model(alone_model, config, image_token_id=IMG, grid=GRIDS)
    if flex and not torch.cuda.is_available():
        # Images on CPU flex are refused (torch's compiled CPU flex returned NaN rows with
        # c2rope's BlockMask; docs/hf.md). The BlockMask itself is tested in test_flex_mask.
        with pytest.raises(ValueError, match="flex_attention with images is not supported on CPU"):
            model(input_ids=ids, position_ids=position_ids)
        return
    grads = not flex or torch.cuda.is_available()
    torch.set_grad_enabled(grads)
    try:
        alone_model.zero_grad(set_to_none=True)
        alone_logits = []
        for sample, (length, spans) in zip(samples, SAMPLES):
            # alone: the same images, given as an explicit layout (the grid list is the packed row's)
            layout = c2rope.VisualLayout.from_spans([spans], length)
            logits = alone_model(input_ids=sample, visual_layout=layout).logits
            if grads:
                _loss(logits, sample).backward()
            alone_logits.append(logits.detach())
        packed = model(input_ids=ids, position_ids=position_ids).logits
        start, total = 0, 0
        for sample, expected in zip(samples, alone_logits):
            got = packed[:, start:start + sample.shape[1]]
            torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=1e-5)
            total = total + _loss(got, sample)
            start += sample.shape[1]
        if grads:
            total.backward()
            alone = dict(alone_model.named_parameters())
            for name, param in model.named_parameters():
                torch.testing.assert_close(param.grad, alone[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    finally:
        torch.set_grad_enabled(True)


def test_explicit_boundaries_and_refusals():
    model = causal_lm("llama", "sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    samples = _samples()
    ids, position_ids, cu = _packed(samples)
    with torch.no_grad():
        by_positions = model(input_ids=ids, position_ids=position_ids).logits
        by_boundaries = model(input_ids=ids, position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                              max_length_q=21, max_length_k=21).logits
        unpacked = model(input_ids=ids).logits  # one long sequence: not the same thing
    torch.testing.assert_close(by_boundaries, by_positions, atol=1e-6, rtol=1e-6)
    assert (unpacked - by_positions).abs().max() > 1e-4
    # an image that crosses a sample boundary is refused
    crossing = position_ids.clone()
    crossing[0, 20:] = torch.arange(crossing.shape[1] - 20)  # a sample now starts inside an image (17-25)
    with pytest.raises(ValueError, match="crosses a packed sample"):
        model(input_ids=ids, position_ids=crossing)
