"""c2rope's vLLM plugin serving Gemma 3 (c2rope/vllm/gemma3.py) against c2rope-patched
transformers (the vLLM lane: scripts/vllm_lane.sh; skipped where vLLM is not installed).

A tiny random Gemma 3 (SigLIP pooled to 4x4 tokens per image; a sliding-window layer,
window 8, shorter than an image, and a global layer on other rope bases) is patched with
each image_attention setting, recorded with c2rope.record_config and saved; vLLM serves the
folder through the plugin and must generate what patched transformers generates: greedy
tokens and log-probs within 1e-4 over 64 tokens, for a batch of text prompts and prompts
with one or two images, twice on one engine (the second run starts steps inside images
found in the prefix cache). Text prompts also match the unpatched model.

Why every setting goes through the plugin's image-row recomputation: transformers' Gemma 3
lets every image token see its whole image (a bidirectional block, on sliding-window
layers too), and vLLM's CPU backend attends Gemma 3's image tokens causally although vLLM
marks Gemma 3 as a prefix-LM; `test_vllm_cpu_attends_gemma3_image_tokens_causally`
measures that on stock vLLM and fails once a vLLM release computes the block on CPU."""
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

import c2rope  # noqa: E402
import vllm_tiny_gemma3 as tiny  # noqa: E402
from c2rope.serving import SERVING_ARCHITECTURES  # noqa: E402
from vllm_common import TOLERANCE, causal_image_gaps, check_greedy_logprobs, served_greedy, stock_vllm  # noqa: E402

# The smallest gap between transformers' own Gemma 3 and vLLM that this test takes as
# "vLLM computes the image rows otherwise" (measured: about 1e-2 on these tiny models;
# vLLM and causal-image transformers agree within 1e-6).
MEASURED_GAP = 1e-3


SUPPRESS = list(range(len(tiny.SPECIALS)))  # text tokens only


def _seed():
    return int(os.environ["C2ROPE_TEST_SEED"])


def make_llm(folder, **kwargs):
    return vllm.LLM(folder, dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=8,
                    limit_mm_per_prompt={"image": 2}, seed=0, **kwargs)


def load(folder, config=None, options=None):
    """transformers' Gemma 3 from `folder`, patched with `config` / `options` (None: unpatched)."""
    import transformers

    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    if config is not None:
        c2rope.patch_model(model, config, options=options)
    return model


def save_patched(folder, config, options=None, linear=None):
    """The tiny checkpoint, patched, recorded and saved as a fine-tuned model would be."""
    tiny.save_tiny_gemma3(folder, seed=_seed(), linear=linear)
    model = load(folder, config, options)
    c2rope.record_config(model)
    model.save_pretrained(folder)
    return model


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


def hf_logprobs(model, inputs, tokens, image_block=True, every=False):
    """float64 [len(tokens)]: transformers' log-prob of each of `tokens` after the prompt
    and the tokens before it ([len(tokens), vocab] with every=True); image_block False:
    Gemma 3's image rows made causal (no token_type_ids)."""
    ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "pixel_values" in inputs:
        kwargs["pixel_values"] = inputs["pixel_values"]
    if image_block:
        kwargs["token_type_ids"] = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        logits = model(**kwargs).logits[0, inputs["input_ids"].shape[1] - 1:-1]
    every_token = torch.log_softmax(logits.double(), dim=-1)
    return every_token if every else every_token[torch.arange(len(tokens)), tokens]


def test_vllm_cpu_attends_gemma3_image_tokens_causally(tmp_path):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("measures vLLM's CPU attention backend")
    folder = str(tmp_path / "gemma3")
    model, processor = tiny.save_tiny_gemma3(folder, seed=_seed())  # stock: no c2rope entry
    llm = make_llm(folder)
    assert llm.llm_engine.model_config.is_mm_prefix_lm  # vLLM knows Gemma 3's image block
    prompts = random_prompts(random.Random(_seed()))
    # Text prompts: vLLM is transformers' Gemma 3. Image prompts: vLLM is transformers
    # with causal image rows, not transformers' own model.
    gaps = causal_image_gaps(llm, prompts, processor, model, hf_logprobs, SUPPRESS)
    assert min(gaps) > MEASURED_GAP, (
        f"vLLM now equals transformers' own Gemma 3 on image prompts (gaps {gaps}): its CPU backend computes the "
        "bidirectional image block; update docs/serving.md (Gemma 3) and c2rope/vllm/gemma3.py's docstring")


# name -> (C2RoPEConfig, options) of c2rope's Gemma 3 patch (docs/gemma.md): the Chebyshev
# rule inside images (default image_attention="chebyshev"; the paper's positions too),
# and Gemma 3's own bidirectional image block (mask="causal", image_attention="bidirectional").
SETTINGS = {
    "outward": (c2rope.C2RoPEConfig(), None),
    "inward": (c2rope.C2RoPEConfig(mask="inward"), None),
    "paper-outward": (c2rope.C2RoPEConfig.paper_code(), None),
    "causal": (c2rope.C2RoPEConfig(mask="causal"), None),
    "bidirectional": (c2rope.C2RoPEConfig(), {"image_attention": "bidirectional"}),
}
# The same positions under the other image rule: the served rule must matter.
OTHER_RULE = {"outward": "bidirectional", "inward": "bidirectional", "paper-outward": None,
              "causal": "outward", "bidirectional": "outward"}


# Each setting on the tiny model; the default one also with the global layers' rope scaled
# linearly (gemma-3-4b-it scales by 8), which c2rope splits on the scaled frequencies.
SERVED = [(name, None) for name in SETTINGS] + [("outward", 8.0)]


@pytest.mark.parametrize("name,linear", SERVED, ids=[n if f is None else f"{n}-linear" for n, f in SERVED])
def test_vllm_serves_gemma3_as_patched_hf(tmp_path, name, linear):
    config, options = SETTINGS[name]
    folder = str(tmp_path / "gemma3")
    model = save_patched(folder, config, options, linear)
    stock = load(folder)
    other = None
    if OTHER_RULE[name] is not None:
        other = load(folder, *SETTINGS[OTHER_RULE[name]])
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(folder)
    rng = random.Random(_seed())
    prompts = random_prompts(rng)
    # 30 words, then an image: the first 32-token block (cached after the first run) ends
    # inside it, so the second run starts a step inside a cached image.
    prompts.append({"prompt": f"{tiny.random_text(rng, 30, 30)} {tiny.BOI} {tiny.random_text(rng)}",
                    "multi_modal_data": {"image": [random_image(rng)]}})
    llm = make_llm(folder, block_size=32, enable_prefix_caching=True, disable_chunked_mm_input=True)
    image_token = model.config.image_token_id
    inside, unpatched = 0, []
    for run in range(2):
        cached = []
        served = served_greedy(llm, prompts, len(processor.tokenizer), SUPPRESS, cached)
        for prompt, result, hits in zip(prompts, served, cached):
            images = prompt.get("multi_modal_data", {}).get("image")
            inputs = processor(text=[prompt["prompt"]], images=images, return_tensors="pt")
            every = hf_logprobs(model, inputs, result[1], every=True)
            reference = check_greedy_logprobs(every, inputs, result, repr(prompt["prompt"]), SUPPRESS)
            if run:
                ids = result[0]
                inside += 0 < hits < len(ids) and ids[hits - 1] == ids[hits] == image_token
                continue
            away = (hf_logprobs(stock, inputs, result[1]) - reference).abs().max().item()
            if images is None:  # text alone is plain RoPE under c2rope: the unpatched model's numbers
                assert away <= TOLERANCE, f"{prompt['prompt']!r}: {away:.2e} from the unpatched model"
                continue
            # Served with the model's own positions, every image prompt would fail the comparison.
            assert away > TOLERANCE, f"the unpatched model gives the same log-probs ({away:.1e})"
            unpatched.append(away)
            if other is not None and prompt is prompts[-1]:
                away = (hf_logprobs(other, inputs, result[1]) - reference).abs().max().item()
                assert away > 1e-3, f"the {OTHER_RULE[name]} image rule gives nearly the same log-probs ({away:.1e})"
    assert inside >= 1, "no prompt of the second run started inside an image"
    # Under Gemma 3's image block the positions matter less inside an image than under the
    # Chebyshev rule (8e-4 at least once, seed 1), but they matter.
    assert max(unpatched) > 1e-3, f"the unpatched model gives nearly the same log-probs ({unpatched})"


def test_stock_vllm_refuses_a_recorded_gemma3(tmp_path):
    """Without the plugin, vLLM does not know the serving architecture the folder names."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(mask="causal"))
    code, output = stock_vllm(folder, max_model_len=512)
    assert code == 3, output[-3000:]
    assert SERVING_ARCHITECTURES["Gemma3ForConditionalGeneration"] in output


@pytest.mark.parametrize("name", ["causal", "outward"])
def test_plugin_refuses_gemma3_with_chunked_images(tmp_path, name):
    """Every Gemma 3 setting recomputes whole images' rows: vLLM's CPU default (chunked
    prefill, images chunked too) is refused when the model is built, naming the setting."""
    folder = str(tmp_path / "model")
    save_patched(folder, *SETTINGS[name])
    with pytest.raises(Exception, match="disable_chunked_mm_input=True"):
        make_llm(folder)


def test_gemma3_image_rule_from_the_record():
    """What the served class reads from config.json's record: the image rule of each setting,
    and a clear ValueError for an option or value c2rope's Gemma 3 patch does not take
    (a hand-edited config.json)."""
    from c2rope.vllm.gemma3 import gemma3_mask_mode

    def rule(config, **options):
        return gemma3_mask_mode({"config": config, "options": options})

    assert rule(c2rope.C2RoPEConfig(), image_attention="chebyshev") == "outward"
    assert rule(c2rope.C2RoPEConfig(mask="inward")) == "inward"
    assert rule(c2rope.C2RoPEConfig(mask="causal"), image_attention="chebyshev") == "block"
    assert rule(c2rope.C2RoPEConfig(mask="inward"), image_attention="bidirectional") == "block"
    with pytest.raises(ValueError, match=r"options\['image_attention'\] must be one of"):
        rule(c2rope.C2RoPEConfig(), image_attention="both")
    with pytest.raises(ValueError, match="takes the option 'image_attention' only.*frame_axis"):
        rule(c2rope.C2RoPEConfig(), frame_axis="temporal")
