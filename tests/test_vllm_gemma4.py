"""c2rope's vLLM plugin serving Gemma 4 with images (c2rope/vllm/gemma4.py) against
c2rope-patched transformers (the vLLM lane: scripts/vllm_lane.sh; skipped where vLLM is not
installed).

A tiny random Gemma 4 (variable-resolution images pooled 2x2 to grids of up to 70 tokens,
rarely square; sliding-window layers, window 8, shorter than an image; global layers on
"proportional" rope rotating a quarter of their wider heads; optionally KV-shared last
layers) is patched with each image_attention setting, recorded with c2rope.record_config
and saved; vLLM serves the folder through the plugin and must generate what patched
transformers generates: greedy tokens and log-probs within 1e-4 over 64 tokens, for a
batch of text prompts and prompts with one or two images of random sizes, twice on one
engine (the second run starts a step inside an image found in the prefix cache). Text
prompts also match the unpatched model.

Why every image setting goes through the plugin's image-row recomputation: transformers'
Gemma 4 lets every image token see its whole image on sliding layers
(use_bidirectional_attention="vision"), and vLLM's CPU backend attends Gemma 4's image
tokens causally; `test_vllm_cpu_attends_gemma4_image_tokens_causally` measures that on
stock vLLM and fails once a vLLM release computes the block on CPU."""
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
import vllm_tiny_gemma4 as tiny  # noqa: E402
from c2rope.serving import SERVING_ARCHITECTURES  # noqa: E402
from vllm_common import TOLERANCE, causal_image_gaps, check_greedy_logprobs, served_greedy, stock_vllm  # noqa: E402

# The smallest gap between transformers' own Gemma 4 and vLLM that this test takes as
# "vLLM computes the image rows otherwise" (measured: 2e-3 to 7e-2 on these tiny models;
# vLLM and causal-image transformers agree within 1e-6).
MEASURED_GAP = 1e-4
SUPPRESS = list(range(len(tiny.SPECIALS)))  # text tokens only
# Words before the image of the prefix-cache prompt: its image covers token 256, where
# vLLM's prefix cache ends a block on this model (its two layer types' pages, 128 and 256
# tokens, are hashed in blocks of 256), so the second run starts a step inside it.
CACHE_WORDS = 224


def _seed():
    return int(os.environ["C2ROPE_TEST_SEED"])


def make_llm(folder, **kwargs):
    return vllm.LLM(folder, dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=8,
                    limit_mm_per_prompt={"image": 2, "video": 0}, seed=0, **kwargs)


def load(folder, config=None, options=None):
    """transformers' Gemma 4 from `folder`, patched with `config` / `options` (None: unpatched)."""
    import transformers

    model = transformers.Gemma4ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    if config is not None:
        c2rope.patch_model(model, config, options=options)
    return model


def save_patched(folder, config, options=None, kv_shared=0, bidirectional="vision"):
    """The tiny checkpoint, patched, recorded and saved as a fine-tuned model would be."""
    tiny.save_tiny_gemma4(folder, seed=_seed(), kv_shared=kv_shared, bidirectional=bidirectional)
    model = load(folder, config, options)
    c2rope.record_config(model)
    model.save_pretrained(folder)
    return model


def random_image(rng, low=3, high=40):
    # Any size: Gemma 4's processor keeps the aspect ratio, at most 70 tokens.
    height, width = rng.randint(low, high), rng.randint(low, high)
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def random_prompts(rng):
    """Two text prompts and three image prompts (one with two images), shuffled."""
    prompts = [{"prompt": tiny.random_text(rng)} for _ in range(2)]
    for count in (1, 1, 2):
        text, images = tiny.random_text(rng, 1, 4), []
        for _ in range(count):
            images.append(random_image(rng))
            text += f" {tiny.IMAGE} {tiny.random_text(rng, 0, 4)}"
        prompts.append({"prompt": text.strip(), "multi_modal_data": {"image": images}})
    rng.shuffle(prompts)
    return prompts


def hf_logprobs(model, inputs, tokens, image_block=True, every=False):
    """float64 [len(tokens)]: transformers' log-prob of each of `tokens` after the prompt
    and the tokens before it ([len(tokens), vocab] with every=True); image_block False:
    Gemma 4's image rows made causal (no mm_token_type_ids marking them)."""
    ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "pixel_values" in inputs:
        kwargs["pixel_values"] = inputs["pixel_values"]
        kwargs["image_position_ids"] = inputs["image_position_ids"]
        kind = (ids == model.config.image_token_id).long()
        kwargs["mm_token_type_ids"] = kind if image_block else torch.zeros_like(kind)
    with torch.no_grad():
        logits = model(**kwargs).logits[0, inputs["input_ids"].shape[1] - 1:-1]
    every_token = torch.log_softmax(logits.double(), dim=-1)
    return every_token if every else every_token[torch.arange(len(tokens)), tokens]


def test_vllm_cpu_attends_gemma4_image_tokens_causally(tmp_path):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("measures vLLM's CPU attention backend")
    folder = str(tmp_path / "gemma4")
    model, processor = tiny.save_tiny_gemma4(folder, seed=_seed())  # stock: no c2rope entry
    llm = make_llm(folder)
    prompts = random_prompts(random.Random(_seed()))
    # Text prompts: vLLM is transformers' Gemma 4. Image prompts: vLLM is transformers
    # with causal image rows, not transformers' own model.
    gaps = causal_image_gaps(llm, prompts, processor, model, hf_logprobs, SUPPRESS)
    assert min(gaps) > MEASURED_GAP, (
        f"vLLM now equals transformers' own Gemma 4 on image prompts (gaps {gaps}): its CPU backend computes the "
        "bidirectional image block; update docs/serving.md (Gemma 4) and c2rope/vllm/gemma4.py's docstring")


# name -> (C2RoPEConfig, options, kv_shared, use_bidirectional_attention) of c2rope's Gemma 4
# patch (docs/gemma.md): the Chebyshev rule inside images (default; the paper's positions
# too), Gemma 4's own mask (the image block on sliding layers: mask="causal",
# image_attention="bidirectional"; causal everywhere for a config without the block), and
# KV-shared last layers (as the small Gemma 4 checkpoints have).
SETTINGS = {
    "outward": (c2rope.C2RoPEConfig(), None, 0, "vision"),
    "inward": (c2rope.C2RoPEConfig(mask="inward"), None, 0, "vision"),
    "paper-outward": (c2rope.C2RoPEConfig.paper_code(), None, 0, "vision"),
    "causal": (c2rope.C2RoPEConfig(mask="causal"), None, 0, "vision"),
    "bidirectional": (c2rope.C2RoPEConfig(), {"image_attention": "bidirectional"}, 0, "vision"),
    "causal-no-block": (c2rope.C2RoPEConfig(mask="causal"), None, 0, None),
    "outward-kv-shared": (c2rope.C2RoPEConfig(), None, 2, "vision"),
    "bidirectional-kv-shared": (c2rope.C2RoPEConfig(), {"image_attention": "bidirectional"}, 2, "vision"),
}
# The same positions under another image rule: the served rule must matter.
OTHER_RULE = {"outward": ("bidirectional", None), "inward": ("outward", None), "causal": ("outward", None),
              "bidirectional": ("outward", None), "outward-kv-shared": ("bidirectional", None)}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_vllm_serves_gemma4_as_patched_hf(tmp_path, name):
    config, options, kv_shared, bidirectional = SETTINGS[name]
    folder = str(tmp_path / "gemma4")
    model = save_patched(folder, config, options, kv_shared, bidirectional)
    stock = load(folder)
    other = None
    if name in OTHER_RULE:
        other_config, other_options = SETTINGS[OTHER_RULE[name][0]][:2]
        other = load(folder, other_config, other_options)
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(folder)
    rng = random.Random(_seed())
    prompts = random_prompts(rng)
    prompts.append({"prompt": f"{tiny.random_text(rng, CACHE_WORDS, CACHE_WORDS)} {tiny.IMAGE} "
                              f"{tiny.random_text(rng)}",
                    "multi_modal_data": {"image": [random_image(rng, 30, 40)]}})
    llm = make_llm(folder, enable_prefix_caching=True, disable_chunked_mm_input=True)
    image_token = model.config.image_token_id
    inside, unpatched, others = 0, [], []
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
            if other is not None:
                others.append((hf_logprobs(other, inputs, result[1]) - reference).abs().max().item())
    assert inside >= 1, f"no prompt of the second run started inside an image (prefix-cache hits {cached})"
    assert max(unpatched) > 1e-3, f"the unpatched model gives nearly the same log-probs ({unpatched})"
    if other is not None:
        assert max(others) > 1e-3, f"the {OTHER_RULE[name][0]} image rule gives nearly the same log-probs ({others})"


def test_stock_vllm_refuses_a_recorded_gemma4(tmp_path):
    """Without the plugin, vLLM does not know the serving architecture the folder names."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(mask="causal"))
    code, output = stock_vllm(folder, max_model_len=512)
    assert code == 3, output[-3000:]
    assert SERVING_ARCHITECTURES["Gemma4ForConditionalGeneration"] in output


@pytest.mark.parametrize("name", ["causal", "outward"])
def test_plugin_refuses_gemma4_with_chunked_images(tmp_path, name):
    """Every Gemma 4 setting with an image rule recomputes whole images' rows: vLLM's CPU
    default (chunked prefill, images chunked too) is refused when the model is built."""
    folder = str(tmp_path / "model")
    save_patched(folder, *SETTINGS[name])
    with pytest.raises(Exception, match="disable_chunked_mm_input=True"):
        make_llm(folder)


def test_plugin_refuses_gemma4_fast_prefill_with_image_rows(tmp_path):
    """vLLM's kv_sharing_fast_prefill runs the KV-shared layers on part of a step's tokens;
    with recomputed image rows it is refused when the model is built, naming the option."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(), kv_shared=2)
    with pytest.raises(Exception, match="kv_sharing_fast_prefill=True is not served"):
        make_llm(folder, disable_chunked_mm_input=True, kv_sharing_fast_prefill=True)


def test_plugin_refuses_gemma4_video():
    """c2rope's Gemma 4 patch refuses video; so does the served class, naming it, before it
    reads anything of the model (no engine needed)."""
    from types import SimpleNamespace

    from c2rope.vllm.gemma4 import C2RoPEGemma4ForConditionalGeneration

    with pytest.raises(ValueError, match="Gemma 4 video is not served"):
        C2RoPEGemma4ForConditionalGeneration.get_mrope_input_positions(None, [1, 2, 3],
                                                                       [SimpleNamespace(modality="video")])


def test_gemma4_image_rule_from_the_record():
    """What the served class reads from config.json's record (and the text config's
    use_bidirectional_attention): the image rule of each setting and where it applies, and a
    clear ValueError for an option or value c2rope's Gemma 4 patch does not take."""
    from types import SimpleNamespace

    from c2rope.vllm.gemma4 import gemma4_mask_rule

    def rule(config, own="vision", **options):
        return gemma4_mask_rule({"config": config, "options": options},
                                SimpleNamespace(use_bidirectional_attention=own))

    assert rule(c2rope.C2RoPEConfig(), image_attention="chebyshev") == ("outward", "all")
    assert rule(c2rope.C2RoPEConfig(mask="inward"), own=None) == ("inward", "all")
    assert rule(c2rope.C2RoPEConfig(mask="causal")) == ("block", "sliding")
    assert rule(c2rope.C2RoPEConfig(mask="inward"), image_attention="bidirectional") == ("block", "sliding")
    assert rule(c2rope.C2RoPEConfig(), own=None, image_attention="bidirectional") == ("causal", "all")
    with pytest.raises(ValueError, match="use_bidirectional_attention='all' is not served"):
        rule(c2rope.C2RoPEConfig(mask="causal"), own="all")
    with pytest.raises(ValueError, match=r"options\['image_attention'\] must be one of"):
        rule(c2rope.C2RoPEConfig(), image_attention="both")
    with pytest.raises(ValueError, match="takes the option 'image_attention' only.*frame_axis"):
        rule(c2rope.C2RoPEConfig(), frame_axis="temporal")
