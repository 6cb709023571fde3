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


# ---------------------------------------------------------------- LLaVA-NeXT / OneVision (anyres)

@pytest.mark.parametrize("form", ["position_ids", "cu_seq_lens"])
@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_anyres_packed_row_equals_each_sample_alone(kind, form):
    from test_hf_llava_next import _grids, _tokens, prompt, tiny_model

    model = tiny_model(kind, "sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    sizes = list(_grids(kind))
    n = [_tokens(_grids(kind)[size]) for size in sizes]
    samples = [prompt(kind, [[(2, sizes[0])]], n[0] + 6),
               prompt(kind, [[(1, sizes[1]), (n[1] + 4, sizes[2])]], n[1] + n[2] + 9), prompt(kind, [[]], 9)]
    ids = torch.cat([s[0] for s in samples], dim=1)
    with_images = [s for s in samples if s[2][0]]
    pixels = torch.cat([s[3]["pixel_values"] for s in with_images])
    image_sizes = torch.cat([s[3]["image_sizes"] for s in with_images])
    lengths = [s[0].shape[1] for s in samples]
    if form == "position_ids":
        extra = {"position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)}
    else:
        cu = torch.tensor([0] + lengths).cumsum(0)
        extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}
    model.zero_grad(set_to_none=True)
    alone = []
    for sample_ids, _, spans, kwargs in samples:
        kwargs = kwargs if spans[0] else {}
        logits = model(input_ids=sample_ids, use_cache=False, **kwargs).logits
        _loss(logits, sample_ids).backward()
        alone.append(logits.detach())
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    packed = model(input_ids=ids, pixel_values=pixels, image_sizes=image_sizes, use_cache=False, **extra).logits
    start, total = 0, 0
    for (sample_ids, _, _, _), expected in zip(samples, alone):
        got = packed[:, start:start + sample_ids.shape[1]]
        torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=1e-5)
        total = total + _loss(got, sample_ids)
        start += sample_ids.shape[1]
    total.backward()
    for name, param in model.named_parameters():
        if name in expected_grads:
            scale = max(1.0, expected_grads[name].abs().max().item())
            assert (param.grad - expected_grads[name]).abs().max().item() <= 1e-5 * scale, name


# ---------------------------------------------------------------- sequence-length validation

def _bad_boundaries(total):
    cu = torch.tensor([0, 14, 35, total])
    return {
        "decreasing": (dict(cu_seq_lens_q=torch.tensor([0, 35, 14, total])), "never decrease"),
        "float": (dict(cu_seq_lens_q=cu.float()), "must hold integers"),
        "start": (dict(cu_seq_lens_q=torch.tensor([3, 14, 35, total])), "from 0 to the packed length"),
        "end": (dict(cu_seq_lens_q=torch.tensor([0, 14, 35, total - 1])), "from 0 to the packed length"),
        "2-D": (dict(cu_seq_lens_q=cu.unsqueeze(0)), "1-D tensor"),
        "list": (dict(cu_seq_lens_q=cu.tolist()), "torch.Tensor"),
        "k differs": (dict(cu_seq_lens_q=cu, cu_seq_lens_k=torch.tensor([0, 14, 30, total])),
                      "cu_seq_lens_k must equal"),
        "k alone": (dict(cu_seq_lens_k=cu), "without cu_seq_lens_q"),
        "k decreasing": (dict(cu_seq_lens_q=cu, cu_seq_lens_k=torch.tensor([0, 35, 14, total])),
                         "cu_seq_lens_k must never decrease"),
        "position_ids disagree": (dict(cu_seq_lens_q=cu, position_ids=torch.arange(total).unsqueeze(0)), "disagree"),
    }


@pytest.mark.parametrize("images", [True, False])
@pytest.mark.parametrize("case", list(_bad_boundaries(46)))
def test_bad_sequence_lengths_are_refused(case, images):
    model = causal_lm("llama", "sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    samples = _samples()
    ids = torch.cat(samples, dim=1)
    if not images:
        ids = ids.masked_fill(ids == IMG, 5)
    kwargs, message = _bad_boundaries(ids.shape[1])[case]
    argument = "cu_seq_lens_k" if "cu_seq_lens_k" in message else "cu_seq_lens_q"
    with pytest.raises((ValueError, TypeError), match=message) as raised:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False, **kwargs)
    assert argument in str(raised.value)


# ---------------------------------------------------------------- O(S) planning

def _long_packed_row(total, samples, long):
    """Spans and position_ids of one long sample and many short ones, every other with an image."""
    import random as _random

    rng = _random.Random(total)
    cuts = sorted(rng.sample(range(1, total - long), samples - 2))
    lengths = [long] + [b - a for a, b in zip([0] + cuts, cuts + [total - long])]
    spans, at = [], 0
    for index, length in enumerate(lengths):
        if index % 2 == 0 and length >= 6:
            spans.append((at + 1, 2, 2))
        at += length
    return spans, torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in torch.utils._pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def _plan(total, spans, position_ids):
    from c2rope.hf.context import CallFrame
    from c2rope.hf.state import C2RoPEState

    state = C2RoPEState(c2rope.C2RoPEConfig(), None, None, "llama")
    frame = CallFrame(state, visual_layout=c2rope.VisualLayout.from_spans([spans], total))
    return state, state.plan(frame=frame, input_ids=None, embeds=None, attention_mask=None, cache=None, batch=1,
                             q_len=total, device=torch.device("cpu"), position_ids=position_ids)


def test_packed_planning_is_linear_in_the_row():
    """No samples x longest-sample tensor: 150 samples, one of 3000 tokens, in 6000."""
    total = 6000
    spans, position_ids = _long_packed_row(total, 150, 3000)
    with _LargestTensor() as seen:
        _, plan = _plan(total, spans, position_ids)
    assert plan.samples is not None and plan.positions.shape == (1, total, 3)
    assert seen.largest <= 8 * total, seen.largest


def test_packed_block_mask_is_classified_in_slabs(monkeypatch):
    """flex_attention's BlockMask of a packed row: equal, block by block, to the dense
    mask, and built without a q x kv tensor."""
    import c2rope.mask as mask_module
    from c2rope.hf.masks import block_mask, dense_mask

    total = 1024
    spans, position_ids = _long_packed_row(total, 40, 300)
    state, plan = _plan(total, spans, position_ids)
    monkeypatch.setattr(mask_module, "_BLOCK_MASK_CHUNK_BYTES", 64 * 1024)
    with _LargestTensor() as seen:
        blocks = block_mask(state, plan, total, total)
    assert seen.largest < total * total // 4, seen.largest
    dense = dense_mask(state, plan, total, total)[0, 0]
    size = 128
    tiles = dense.view(total // size, size, total // size, size).permute(0, 2, 1, 3)
    any_allowed, all_allowed = tiles.any(-1).any(-1), tiles.all(-1).all(-1)
    listed = blocks.to_dense()[0, 0].bool()  # partial and full blocks
    torch.testing.assert_close(listed, any_allowed)
    full = torch.zeros_like(listed)
    for qb in range(total // size):
        count = int(blocks.full_kv_num_blocks[0, 0, qb])
        full[qb, blocks.full_kv_indices[0, 0, qb, :count].long()] = True
    torch.testing.assert_close(full, all_allowed)
    q, kv = torch.meshgrid(torch.arange(total), torch.arange(total), indexing="ij")
    evaluated = blocks.mask_mod(torch.zeros_like(q), None, q, kv)
    torch.testing.assert_close(evaluated, dense)
