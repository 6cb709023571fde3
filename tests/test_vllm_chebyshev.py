"""The Chebyshev image mask (mask="outward" / "inward") served by c2rope's vLLM plugin on
vLLM's CPU backend (c2rope/vllm/chebyshev.py), against c2rope-patched transformers (the
vLLM lane, scripts/vllm_lane.sh; skipped where vLLM is not installed).

The same comparison as tests/test_vllm_serving.py (greedy tokens, log-probs within 1e-4
over 64 tokens, a batch of text, image and video prompts), run twice on one engine: the
second run finds the prompts' first KV blocks in vLLM's prefix cache, so image rows are
also computed from a step that starts inside an image. The mask must matter: the prompt
with a 4 x 4 image gets log-probs more than 1e-3 away under the causal mask (and the plugin
with its image rows switched off fails the comparison)."""
import random
from types import SimpleNamespace

import pytest

# (test_vllm_serving skips this module where vLLM is not installed.)
from test_vllm_serving import HF_CLASSES, _seed, compare, hf_logprobs, make_llm, random_prompts
from test_vllm_serving import save_patched, vllm

import numpy as np
import torch
import transformers
from PIL import Image

import c2rope
import vllm_tiny
from vllm_common import served_greedy


def random_image(rng, height, width):
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# (kind, mask, options): the frame axis adds a 4th position row, which carries no image cells.
CHEBYSHEV = [("qwen2_vl", "outward", None), ("qwen2_5_vl", "inward", None),
             ("qwen2_5_vl", "outward", {"frame_axis": "separate"}), ("qwen3_vl", "outward", None)]


def _image_tokens(inputs):
    """Prompt indices of image and video tokens."""
    ids = inputs["input_ids"][0]
    vision = (ids == vllm_tiny.SPECIALS.index("<|image_pad|>")) | (ids == vllm_tiny.SPECIALS.index("<|video_pad|>"))
    return set(vision.nonzero().flatten().tolist())




@pytest.mark.parametrize("kind,mask,options", CHEBYSHEV,
                         ids=[f"{k}-{m}" + ("-frames" if o else "") for k, m, o in CHEBYSHEV])
def test_vllm_serves_the_chebyshev_mask(tmp_path, kind, mask, options):
    folder = str(tmp_path / kind)
    model = save_patched(folder, kind, c2rope.C2RoPEConfig(mask=mask), options)
    causal = HF_CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(causal, c2rope.C2RoPEConfig(mask="causal"), options=options)  # same positions, causal
    processor = transformers.AutoProcessor.from_pretrained(folder)
    suppress = list(range(len(vllm_tiny.SPECIALS)))
    rng = random.Random(_seed())
    prompts = random_prompts(rng)
    # 30 words, vision start, a 4 x 4 image at tokens 31 ... 46: the first 32-token block
    # (cached after the first run) ends inside the image.
    image = random_image(rng, 16, 16)
    prompts.append({"prompt": f"{vllm_tiny.random_text(rng, 30, 30)} {vllm_tiny.IMAGE} {vllm_tiny.random_text(rng)}",
                    "multi_modal_data": {"image": [image]}})
    # Blocks of 32 tokens: the second run's prompts hit the prefix cache, some inside an image.
    llm = make_llm(folder, block_size=32, enable_prefix_caching=True, disable_chunked_mm_input=True)
    vocab = model.config.text_config.vocab_size
    inside = 0
    for run in range(2):
        hits = []
        served = served_greedy(llm, prompts, vocab, suppress, hits)
        parted = []
        for prompt, (ids, tokens, logprobs), cached in zip(prompts, served, hits):
            inputs, reference, step = compare(model, processor, prompt, (ids, tokens, logprobs), suppress)
            parted += [] if step is None else [step]
            if run == 0 and prompt is prompts[-1]:
                # A 4 x 4 image moves them by far more than 1e-3 (a 1 x 2 one: about 3e-4).
                away = (hf_logprobs(causal, inputs, tokens) - reference).abs().max().item()
                assert away > 1e-3, f"the causal mask gives nearly the same log-probs ({away:.1e})"
            vision = _image_tokens(inputs)
            inside += run == 1 and cached - 1 in vision and cached in vision  # the cache ends inside an image
        assert len(parted) <= 1, f"greedy runs parted at ties in {len(parted)} of {len(prompts)} prompts"
    assert inside >= 1, "no prompt of the second run started inside an image"


def test_the_chebyshev_mask_is_refused_on_other_backends():
    """On any attention backend but vLLM's CPU one (a GPU engine: FLASH_ATTN, TRITON_ATTN,
    FLEX_ATTENTION, ...) the layers are not touched and the model is refused by the
    backend's name, never served causally."""
    from c2rope.vllm import chebyshev

    config = SimpleNamespace(scheduler_config=SimpleNamespace(enable_chunked_prefill=True,
                                                              disable_chunked_mm_input=True))
    for backend in ("FLASH_ATTN", "TRITON_ATTN", "FLEX_ATTENTION"):
        layer = SimpleNamespace(attn_backend=SimpleNamespace(get_name=lambda name=backend: name), impl=object())
        with pytest.raises(ValueError, match=f"attention backend is {backend}"):
            chebyshev.install([layer], chebyshev.MaskState("outward"), config)
        assert type(layer.impl) is object


def _cpu_layer(num_heads, num_kv_heads, head, mode, window=-1):
    """A ChebyshevCPUImpl as `install` leaves it, without an engine around it (window: vLLM's
    sliding_window of the layer, -1 for none)."""
    from c2rope.vllm import chebyshev

    impl = object.__new__(chebyshev.ChebyshevCPUImpl)
    impl.num_heads, impl.num_kv_heads, impl.scale = num_heads, num_kv_heads, head ** -0.5
    impl.sliding_window = window
    impl.c2rope_state = chebyshev.MaskState(mode)
    return impl


@pytest.mark.parametrize("mode,window", [("outward", -1), ("inward", -1), ("outward", 6), ("block", -1),
                                         ("block", 6)])
def test_image_rows_equal_the_dense_chebyshev_mask(mode, window):
    """One request with two images (3 x 4 and 2 x 2) in vLLM's paged CPU cache (its own
    write op, non-contiguous blocks); this step starts inside the first image (its start
    came from the prefix cache). The recomputed image rows equal SDPA under
    c2rope.chebyshev_mask ("block": causal or same image, Gemma 3's own); text rows are left
    to vLLM's kernel. A sliding window (Gemma 3's sliding layers) is and-ed on, and the keys
    before the lowest row's window are never read (vLLM may have freed them)."""
    from vllm import _custom_ops as ops

    from c2rope.vllm.chebyshev import image_cells
    from c2rope.vllm.positions import attach_cells, encode_positions

    gen = torch.Generator().manual_seed(_seed())
    heads, kv_heads, head, block = 4, 2, 32, 32
    spans = [(5, 3, 4), (40, 2, 2)]
    seq, first = 70, 9  # this step: tokens 9 ... 69
    layout = c2rope.VisualLayout.from_spans([spans], seq)
    if mode == "block":
        image_of = torch.zeros(seq, dtype=torch.int64)
        for number, (start, h, w) in enumerate(spans, 1):
            image_of[start:start + h * w] = number
        same = (image_of[:, None] == image_of[None, :]) & (image_of[:, None] > 0)
        dense = torch.ones(seq, seq, dtype=torch.bool).tril() | same
    else:
        dense = c2rope.chebyshev_mask(layout, c2rope.C2RoPEConfig(mask=mode))[0, 0]  # [seq, seq] bool
    if window > 0:
        dense &= torch.arange(seq)[None, :] > torch.arange(seq)[:, None] - window
    q = torch.randn(seq, heads, head, generator=gen)
    k = torch.randn(seq, kv_heads, head, generator=gen)
    v = torch.randn(seq, kv_heads, head, generator=gen)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=dense, enable_gqa=True).transpose(0, 1)

    kv_cache = torch.zeros(4, kv_heads, block, 2 * head)
    keys, values = kv_cache.view(4, kv_heads, 2 * block, head).chunk(2, dim=2)
    block_table = torch.tensor([[2, 0, 3]], dtype=torch.int32)
    slots = block_table[0].long()[torch.arange(seq) // block] * block + torch.arange(seq) % block
    ops.cpu_attn_reshape_and_cache(k, v, keys, values, slots, "vec")
    if window > 0:  # the keys no row of this step sees (before token first - window + 1): gone
        gone = slots[:first - window + 1]
        flat = kv_cache.view(4, kv_heads, 2, block * head)
        for slot in gone.tolist():
            keys_t = flat[slot // block, :, 0].view(kv_heads, head, block)
            keys_t[:, :, slot % block] = float("nan")
            flat[slot // block, :, 1].view(kv_heads, block, head)[:, slot % block] = float("nan")

    encoded = encode_positions(torch.zeros(3, seq))
    encoded = attach_cells(encoded, torch.zeros(3, seq), image_cells(spans, seq))[:, first:]
    impl = _cpu_layer(heads, kv_heads, head, mode, window)
    impl.c2rope_state.step(encoded)
    meta = SimpleNamespace(query_start_loc=torch.tensor([0, seq - first], dtype=torch.int32),
                           seq_lens=torch.tensor([seq], dtype=torch.int32), block_table=block_table)
    layer = SimpleNamespace(isa="vec")
    output = torch.full((seq - first, heads, head), float("nan"))
    impl._image_rows(layer, q[first:], k[first:], v[first:], kv_cache, meta, output,
                     impl.c2rope_state.cells, impl.c2rope_state.rows)
    image = torch.tensor(sorted(set(range(first, 17)) | set(range(40, 44))))
    torch.testing.assert_close(output[image - first], expected[image], atol=1e-5, rtol=1e-5)
    text = torch.ones(seq - first, dtype=torch.bool)
    text[image - first] = False
    assert bool(output[text].isnan().all()), "text rows are vLLM's kernel's, not recomputed"

    # A step that ends inside an image (its last keys do not exist yet) is refused.
    short = SimpleNamespace(query_start_loc=torch.tensor([0, 42 - first], dtype=torch.int32),
                            seq_lens=torch.tensor([42], dtype=torch.int32), block_table=block_table)
    impl.c2rope_state.step(encoded[:, :42 - first])
    with pytest.raises(RuntimeError, match=r"part of an image \(tokens 40..43\)"):
        impl._image_rows(layer, q[first:42], k[first:42], v[first:42], kv_cache, short, output,
                         impl.c2rope_state.cells, impl.c2rope_state.rows)
    # Another CPU kernel's cache layout is refused by name, and a cache that does not hold
    # this step's keys where they are read is refused too.
    impl.c2rope_state.step(encoded)
    with pytest.raises(RuntimeError, match="kernel is 'amx'"):
        impl._image_rows(SimpleNamespace(isa="amx"), q[first:], k[first:], v[first:], kv_cache, meta, output,
                         impl.c2rope_state.cells, impl.c2rope_state.rows)
    with pytest.raises(RuntimeError, match="unknown cache layout"):
        impl._image_rows(layer, q[first:], k[first:], v[first:], kv_cache.transpose(2, 3).contiguous()
                         .view_as(kv_cache), meta, output, impl.c2rope_state.cells, impl.c2rope_state.rows)
