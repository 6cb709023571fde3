"""Why c2rope's vLLM plugin does not serve Gemma 3 (c2rope/hf/serving.py NOT_SERVED,
docs/serving.md), measured on this install (the vLLM lane: scripts/vllm_lane.sh; skipped
where vLLM is not installed).

transformers' Gemma 3 lets every image token see every token of its image (a bidirectional
image block, on sliding-window and global layers); a C2RoPE-patched Gemma 3 keeps that
block or replaces it with c2rope's Chebyshev mask, so its image rows are never causal.
vLLM marks Gemma 3 as a prefix-LM (is_mm_prefix_lm) for its GPU backends, but its CPU
backend attends causally: stock vLLM on a tiny stock Gemma 3 equals stock transformers on
text prompts and on image prompts only when transformers' image rows are made causal too.
When a vLLM release computes the block on CPU this test fails: then the plugin's image
mask can be extended to Gemma 3's sliding-window layers and the family served."""
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is written in code
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM tests run in scripts/vllm_lane.sh")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import vllm_tiny_gemma3 as tiny  # noqa: E402
from vllm_common import NEW_TOKENS, served_greedy  # noqa: E402

TOLERANCE = 1e-4
# The smallest gap between transformers' own Gemma 3 and vLLM that this test takes as
# "vLLM computes the image rows otherwise" (measured: about 1e-2 on these tiny models;
# vLLM and causal-image transformers agree within 1e-6).
MEASURED_GAP = 1e-3


def _seed():
    return int(os.environ["C2ROPE_TEST_SEED"])


def random_image(rng):
    # Any size: Gemma 3's processor resizes every image to 16x16 (one 4x4 token grid).
    height, width = rng.randint(3, 40), rng.randint(3, 40)
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def random_prompts(rng):
    """Two text prompts and three image prompts (one with two images), shuffled."""
    prompts = [{"prompt": tiny.random_text(rng)} for _ in range(2)]
    for count in (1, 1, 2):
        text, images = tiny.random_text(rng, 1, 4), []
        for _ in range(count):
            images.append(random_image(rng))
            text += f" {tiny.BOI} {tiny.random_text(rng, 0, 4)}"
        prompts.append({"prompt": text.strip(), "multi_modal_data": {"image": images}})
    rng.shuffle(prompts)
    return prompts


def hf_logprobs(model, inputs, tokens, image_block):
    """float64 [len(tokens)]: transformers' log-prob of each of `tokens` after the prompt
    and the tokens before it; image_block False: image rows causal (no token_type_ids)."""
    ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "pixel_values" in inputs:
        kwargs["pixel_values"] = inputs["pixel_values"]
    if image_block:
        kwargs["token_type_ids"] = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        logits = model(**kwargs).logits[0, inputs["input_ids"].shape[1] - 1:-1]
    return torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(tokens)), tokens]


def test_vllm_cpu_attends_gemma3_image_tokens_causally(tmp_path):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("measures vLLM's CPU attention backend")
    folder = str(tmp_path / "gemma3")
    model, processor = tiny.save_tiny_gemma3(folder, seed=_seed())  # stock: no c2rope entry
    llm = vllm.LLM(folder, dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=8,
                   limit_mm_per_prompt={"image": 2}, seed=0)
    assert llm.llm_engine.model_config.is_mm_prefix_lm  # vLLM knows Gemma 3's image block
    prompts = random_prompts(random.Random(_seed()))
    served = served_greedy(llm, prompts, len(processor.tokenizer), suppress=range(len(tiny.SPECIALS)))
    gaps = []
    for prompt, (prompt_ids, tokens, logprobs) in zip(prompts, served):
        images = prompt.get("multi_modal_data", {}).get("image")
        inputs = processor(text=[prompt["prompt"]], images=images, return_tensors="pt")
        assert prompt_ids == inputs["input_ids"][0].tolist(), "vLLM and transformers tokenised a prompt differently"
        assert len(tokens) == NEW_TOKENS
        served_lp = torch.tensor(logprobs, dtype=torch.float64)
        causal = (served_lp - hf_logprobs(model, inputs, tokens, image_block=False)).abs().max().item()
        own = (served_lp - hf_logprobs(model, inputs, tokens, image_block=True)).abs().max().item()
        # Text prompts: vLLM is transformers' Gemma 3. Image prompts: vLLM is transformers
        # with causal image rows, not transformers' own model.
        assert causal <= TOLERANCE, f"vLLM differs from causal-image transformers by {causal:.2e}: {prompt}"
        if images is None:
            assert own <= TOLERANCE, f"vLLM differs from transformers by {own:.2e} on a text prompt"
        else:
            gaps.append(own)
    assert min(gaps) > MEASURED_GAP, (
        f"vLLM now equals transformers' own Gemma 3 on image prompts (gaps {gaps}): its CPU backend computes the "
        "bidirectional image block; serve Gemma 3 (c2rope/hf/serving.py NOT_SERVED)")
