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

import pytest

# (test_vllm_serving skips this module where vLLM is not installed.)
from test_vllm_serving import HF_CLASSES, NEW_TOKENS, _seed, compare, hf_logprobs, make_llm, random_prompts
from test_vllm_serving import save_patched, vllm

import numpy as np
import torch
import transformers
from PIL import Image

import c2rope
import vllm_tiny


def random_image(rng, height, width):
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


CHEBYSHEV = [("qwen2_vl", "outward"), ("qwen2_5_vl", "inward")]


def _image_tokens(inputs):
    """Prompt indices of image and video tokens."""
    ids = inputs["input_ids"][0]
    vision = (ids == vllm_tiny.SPECIALS.index("<|image_pad|>")) | (ids == vllm_tiny.SPECIALS.index("<|video_pad|>"))
    return set(vision.nonzero().flatten().tolist())


def served_greedy(llm, prompts, vocab_size, suppress):
    """[(prompt ids, tokens, log-probs, prompt tokens found in the prefix cache)]."""
    allowed = [i for i in range(vocab_size) if i not in suppress]
    params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1,
                                 allowed_token_ids=allowed)
    results = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        completion = out.outputs[0]
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
        results.append((list(out.prompt_token_ids), list(completion.token_ids), logprobs,
                        out.num_cached_tokens or 0))
    return results


@pytest.mark.parametrize("kind,mask", CHEBYSHEV, ids=[f"{k}-{m}" for k, m in CHEBYSHEV])
def test_vllm_serves_the_chebyshev_mask(tmp_path, kind, mask):
    folder = str(tmp_path / kind)
    model = save_patched(folder, kind, c2rope.C2RoPEConfig(mask=mask))
    causal = HF_CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(causal, c2rope.C2RoPEConfig(mask="causal"))  # same positions, causal attention
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
        served = served_greedy(llm, prompts, vocab, suppress)
        parted = []
        for prompt, (ids, tokens, logprobs, cached) in zip(prompts, served):
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
    from types import SimpleNamespace

    from c2rope.vllm import chebyshev

    config = SimpleNamespace(scheduler_config=SimpleNamespace(enable_chunked_prefill=True,
                                                              disable_chunked_mm_input=True))
    for backend in ("FLASH_ATTN", "TRITON_ATTN", "FLEX_ATTENTION"):
        layer = SimpleNamespace(attn_backend=SimpleNamespace(get_name=lambda name=backend: name), impl=object())
        with pytest.raises(ValueError, match=f"attention backend is {backend}"):
            chebyshev.install([layer], chebyshev.MaskState("outward"), config)
        assert type(layer.impl) is object
