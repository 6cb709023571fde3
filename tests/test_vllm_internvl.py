"""c2rope's vLLM plugin serving InternVL (c2rope/vllm/internvl.py) against c2rope-patched
transformers (the vLLM lane: scripts/vllm_lane.sh; skipped where vLLM is not installed).

A tiny random InternVL ("-HF" format: InternViT, pixel shuffle, Qwen2; 16x16-pixel tiles
of 4x4 tokens, up to 4 tiles and a thumbnail per image) is patched with a C2RoPEConfig,
recorded with c2rope.record_config and saved; vLLM serves that folder through the plugin
and must generate what patched transformers generates: the same greedy tokens and
log-probs within 1e-4, over 64 tokens, for a batch of text prompts and prompts with one or
two images of random tile counts (and a video prompt: every frame one tile). The
comparison itself is tests/vllm_common.py's (`compare`). Text prompts also match the
unpatched model (plain RoPE); image prompts do not. The Chebyshev mask: the same
comparison with vLLM's prefix cache, as for LLaVA."""
import dataclasses
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is written in code
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM tests run in scripts/vllm_lane.sh")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

import c2rope  # noqa: E402
import vllm_tiny_internvl as tiny  # noqa: E402
from c2rope.serving import SERVING_ARCHITECTURES  # noqa: E402
from vllm_common import check_batch, chebyshev_runs, served_greedy, stock_vllm  # noqa: E402

SUPPRESS = list(range(len(tiny.SPECIALS)))  # end of text, the image / video tokens: text tokens only
MODEL = transformers.InternVLForConditionalGeneration


def _seed():
    return int(os.environ["C2ROPE_TEST_SEED"])


def save_patched(folder, config):
    """The tiny checkpoint, patched, recorded and saved as a fine-tuned model would be."""
    tiny.save_tiny_internvl(folder, seed=_seed())
    model = MODEL.from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(model, config)
    c2rope.record_config(model)
    model.save_pretrained(folder)
    return model


def make_llm(folder, **kwargs):
    return vllm.LLM(folder, dtype="float32", enforce_eager=True, max_model_len=768, max_num_seqs=8,
                    limit_mm_per_prompt={"image": 2, "video": 1}, seed=0, **kwargs)


def random_image(rng):
    """An image near `rows x cols` tiles (1 to 4 of them, drawn from rng): the processor
    tiles it so, plus a thumbnail when there is more than one tile."""
    rows = rng.randint(1, tiny.MAX_TILES)
    cols = rng.randint(1, tiny.MAX_TILES // rows)
    height = rows * tiny.PIXELS + rng.randint(-3, 3)
    width = cols * tiny.PIXELS + rng.randint(-3, 3)
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def random_video(rng):
    """2 to 4 frames of one random size (every frame one tile)."""
    frames, height, width = rng.randint(2, 4), rng.randint(8, 40), rng.randint(8, 40)
    return np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def random_prompts(rng, video=False):
    """Two text prompts and three image prompts (one with two images, back to back or
    apart), shuffled; video: also a prompt with a video."""
    prompts = [{"prompt": tiny.random_text(rng)} for _ in range(2)]
    for count in (1, 1, 2):
        text, images = tiny.random_text(rng, 1, 4), []
        for _ in range(count):
            images.append(random_image(rng))
            between = tiny.random_text(rng, 1, 4) if rng.random() < 0.5 else ""
            text += f" {tiny.IMAGE} {between}"
        prompts.append({"prompt": text.strip(), "multi_modal_data": {"image": images}})
    if video:
        text = f"{tiny.random_text(rng, 1, 4)} {tiny.VIDEO} {tiny.random_text(rng, 1, 4)}"
        prompts.append({"prompt": text, "multi_modal_data": {"video": [random_video(rng)]}})
    rng.shuffle(prompts)
    return prompts


def hf_inputs(processor, prompt):
    data = prompt.get("multi_modal_data", {})
    return processor(text=[prompt["prompt"]], images=data.get("image"), videos=data.get("video"),
                     return_tensors="pt")


def as_transformers(served, vocab):
    """vLLM writes a video frame's tokens as the video token, transformers' processor as
    the image token (the same embeddings, the same c2rope positions): compare them so."""
    prompt, tokens, logprobs = served
    video, image = vocab[tiny.VIDEO], vocab[tiny.IMAGE]
    return [image if t == video else t for t in prompt], tokens, logprobs


def tile_counts(processor, prompts):
    """Tiles of every image of `prompts`, as the processor cuts them."""
    counts = []
    for prompt in prompts:
        for image in prompt.get("multi_modal_data", {}).get("image", []):
            counts.append(int(processor.image_processor(images=[image], return_tensors="pt")["num_patches"][0]))
    return counts


# The default (raster m, spread split; mask="outward") and the paper's code (concentric m,
# merged coordinates, blocked split; mask="inward"): their positions under the causal
# mask here, each with its own Chebyshev mask in test_vllm_serves_the_chebyshev_mask_on_internvl.
CONFIGS = {"default": c2rope.C2RoPEConfig(), "paper_code": c2rope.C2RoPEConfig.paper_code()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vllm_serves_internvl_as_patched_hf_generates(tmp_path, name):
    config = dataclasses.replace(CONFIGS[name], mask="causal")
    folder = str(tmp_path / "internvl")
    model = save_patched(folder, config)
    stock = MODEL.from_pretrained(folder, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    vocab = processor.tokenizer.get_vocab()
    rng = random.Random(_seed())
    prompts = random_prompts(rng, video=True)
    assert max(tile_counts(processor, prompts)) > 1, "no image of several tiles (and a thumbnail)"
    served = served_greedy(make_llm(folder), prompts, model.config.text_config.vocab_size, SUPPRESS)
    served = [as_transformers(result, vocab) for result in served]
    check_batch(model, stock, prompts, served, lambda prompt: hf_inputs(processor, prompt), SUPPRESS)


def test_stock_vllm_refuses_a_recorded_internvl(tmp_path):
    """Without the plugin (VLLM_PLUGINS names only vLLM's own), vLLM does not know the
    serving architecture the folder names, and refuses to build it."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(mask="causal"))
    code, output = stock_vllm(folder, max_model_len=768)
    assert code == 3, output[-3000:]
    assert SERVING_ARCHITECTURES[MODEL.__name__] in output


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vllm_serves_the_chebyshev_mask_on_internvl(tmp_path, name):
    """The comparison above under the config's own Chebyshev mask, run twice on one engine: the
    second run finds the prompts' first 32-token blocks in vLLM's prefix cache, so tile
    rows are also computed from a step that starts inside a tile. The mask must matter:
    the prompt with an image from token 30 on gets log-probs more than 1e-3 away under the
    causal mask."""
    folder = str(tmp_path / "internvl")
    model = save_patched(folder, CONFIGS[name])
    causal = MODEL.from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(causal, dataclasses.replace(CONFIGS[name], mask="causal"))  # same positions, causal mask
    processor = transformers.AutoProcessor.from_pretrained(folder)
    vocab = processor.tokenizer.get_vocab()
    rng = random.Random(_seed())
    prompts = random_prompts(rng)
    # 29 words, <img>, then the tiles: the first 32-token block (cached after the first run) ends inside one.
    prompts.append({"prompt": f"{tiny.random_text(rng, 29, 29)} {tiny.IMAGE} {tiny.random_text(rng)}",
                    "multi_modal_data": {"image": [random_image(rng)]}})
    llm = make_llm(folder, block_size=32, enable_prefix_caching=True, disable_chunked_mm_input=True)
    chebyshev_runs(llm, prompts, model, causal, lambda prompt: hf_inputs(processor, prompt),
                   model.config.text_config.vocab_size, SUPPRESS, vocab[tiny.IMAGE])


def test_plugin_refuses_internvl_that_vllm_computes_otherwise(tmp_path):
    """A config whose image features vLLM's InternVL computes otherwise (here: another
    vision_feature_layer, edited into config.json after recording) is refused when the
    model is built, naming the setting."""
    import json

    folder = tmp_path / "model"
    save_patched(str(folder), c2rope.C2RoPEConfig(mask="causal"))
    written = json.loads((folder / "config.json").read_text())
    written["vision_feature_layer"] = -2
    (folder / "config.json").write_text(json.dumps(written))
    with pytest.raises(Exception, match="vision_feature_layer=-1"):
        make_llm(str(folder))
