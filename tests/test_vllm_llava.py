"""c2rope's vLLM plugin serving LLaVA, LLaVA-NeXT (c2rope/vllm/llava.py) and LLaVA-OneVision
(c2rope/vllm/onevision.py) against c2rope-patched transformers (the vLLM lane:
scripts/vllm_lane.sh; skipped where vLLM is not installed).

A tiny random LLaVA, LLaVA-NeXT or LLaVA-OneVision (CLIP + Llama; anyres tiles for NeXT
and OneVision, OneVision's anyres_max_9 shrink on large images) is patched with a
causal C2RoPEConfig, recorded with c2rope.record_config and saved; vLLM serves that folder
through the plugin and must generate what patched transformers generates: the same greedy
tokens and log-probs within 1e-4, over 64 tokens, for a batch of text prompts and prompts
with one or two images of random sizes. Same standard as tests/test_vllm_serving.py
(Qwen-VL); text prompts also match the unpatched model (plain RoPE). The Chebyshev mask
(mask="outward" / "inward"): the same comparison, with vLLM's prefix cache (CHEBYSHEV).
OneVision also gets video prompts (pooled frames), alone and with an image."""
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
import vllm_tiny_llava as tiny  # noqa: E402
from c2rope.serving import SERVING_ARCHITECTURES  # noqa: E402
from vllm_common import check_batch, chebyshev_runs, served_greedy, stock_vllm  # noqa: E402


def suppressed(kind):
    """The special tokens of `kind` (end of text, image, OneVision's video): text tokens only."""
    return list(range(len(tiny.specials(kind))))


def _seed():
    return int(os.environ["C2ROPE_TEST_SEED"])


def save_patched(folder, config, kind="llava"):
    """The tiny checkpoint, patched, recorded and saved as a fine-tuned model would be."""
    tiny.save_tiny_llava(folder, seed=_seed(), kind=kind)
    model = tiny.CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(model, config)
    c2rope.record_config(model)
    model.save_pretrained(folder)
    return model


def make_llm(folder, kind="llava", **kwargs):
    limits = {"image": 2, "video": 1} if kind == "llava_onevision" else {"image": 2}
    return vllm.LLM(folder, dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=8,
                    limit_mm_per_prompt=limits, seed=0, **kwargs)


def random_image(rng, large=False):
    # Any size: LLaVA's processor resizes and crops every image to 8x8 (one 4x4 grid);
    # LLaVA-NeXT's adds the tiles of the best pinpoint, unpadded to the aspect ratio.
    # large: near-square, 28 px or more, which OneVision tiles 4x4 and then shrinks.
    height, width = rng.randint(3, 40), rng.randint(3, 40)
    if large:
        height = rng.randint(28, 48)
        width = height + rng.randint(-4, 4)
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def random_video(rng):
    """1 to 4 frames of one random size (OneVision resizes every frame to 8x8, one 4x4
    grid, and pools it to 2x2)."""
    frames, height, width = rng.randint(1, 4), rng.randint(3, 40), rng.randint(3, 40)
    return np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def random_prompts(rng, large=False, videos=False):
    """Two text prompts and three image prompts (one with two images, back to back or
    apart), shuffled; large: the first image is a large one (random_image); videos: also
    a video prompt and one with an image and a video (OneVision)."""
    prompts = [{"prompt": tiny.random_text(rng)} for _ in range(2)]
    for count in (1, 1, 2):
        text, images = tiny.random_text(rng, 1, 4), []
        for _ in range(count):
            images.append(random_image(rng, large and len(prompts) == 2 and not images))
            between = tiny.random_text(rng, 1, 4) if rng.random() < 0.5 else ""
            text += f" {tiny.IMAGE} {between}"
        prompts.append({"prompt": text.strip(), "multi_modal_data": {"image": images}})
    for with_image in ([False, True] if videos else []):
        parts = [tiny.random_text(rng, 1, 4), tiny.VIDEO, tiny.random_text(rng, 1, 4)]
        data = {"video": [random_video(rng)]}
        if with_image:
            parts[rng.choice([0, 3]):0] = [tiny.IMAGE]  # the image before or after the video
            data["image"] = [random_image(rng)]
        prompts.append({"prompt": " ".join(parts), "multi_modal_data": data})
    rng.shuffle(prompts)
    return prompts


def hf_inputs(processor, prompt):
    data = prompt.get("multi_modal_data", {})
    if "video" in data:
        return processor(text=[prompt["prompt"]], images=data.get("image"), videos=data["video"], return_tensors="pt")
    return processor(text=[prompt["prompt"]], images=data.get("image"), return_tensors="pt")


# The default split on raster m; the paper's (concentric m: an image's mean m is any
# rational, merged coordinates, blocked split); the recommended one (one shared,
# half-integer m per image, spread split). The Chebyshev mask: CHEBYSHEV below.
SERVED = [("llava", "causal"), ("llava", "paper-causal"), ("llava", "recommended-causal"),
          ("llava_next", "paper-causal"), ("llava_next", "recommended-causal"),
          ("llava_onevision", "paper-causal"), ("llava_onevision", "recommended-causal")]


@pytest.mark.parametrize("kind,name", SERVED, ids=[f"{k}-{n}" for k, n in SERVED])
def test_vllm_serves_llava_as_patched_hf_generates(tmp_path, kind, name):
    folder = str(tmp_path / kind)
    model = save_patched(folder, c2rope.C2RoPEConfig.from_name(name), kind)
    stock = tiny.CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    rng = random.Random(_seed())
    prompts = random_prompts(rng, large=kind == "llava_onevision", videos=kind == "llava_onevision")
    suppress = suppressed(kind)
    served = served_greedy(make_llm(folder, kind), prompts, model.config.text_config.vocab_size, suppress)
    if kind == "llava_onevision":  # the large image was shrunk: fewer tokens than its 4x4 tiles unshrunk
        assert any(_shrunk(model, processor, prompt) for prompt in prompts)
    check_batch(model, stock, prompts, served, lambda prompt: hf_inputs(processor, prompt), suppress)


def _shrunk(model, processor, prompt):
    """Whether one of `prompt`'s images has a high-res grid anyres_max_9 shrank (OneVision)."""
    from c2rope.hf.families.llava_next.anyres import AnyresGeometry

    geometry = AnyresGeometry(model)
    for image in prompt.get("multi_modal_data", {}).get("image", []):
        rows, cols = geometry.tile_grid(image.height, image.width)
        high = geometry.image(image.height, image.width).grids[1:]
        if rows * cols == 16 and high and high[0][0] < rows * geometry.side and high[0][1] - 1 < cols * geometry.side:
            return True
    return False


@pytest.mark.parametrize("kind", ["llava", "llava_onevision"])
def test_stock_vllm_refuses_a_recorded_llava(tmp_path, kind):
    """Without the plugin (VLLM_PLUGINS names only vLLM's own), vLLM does not know the
    serving architecture the folder names, and refuses to build it."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(mask="causal"), kind)
    code, output = stock_vllm(folder, max_model_len=512)
    assert code == 3, output[-3000:]
    assert SERVING_ARCHITECTURES[tiny.CLASSES[kind].__name__] in output


# The Chebyshev mask (c2rope/vllm/chebyshev.py on vLLM's CPU backend): one ring set per
# grid (LLaVA-NeXT: the base view, and the high-resolution grid with its newline column).
CHEBYSHEV = [("llava", "outward"), ("llava", "inward"), ("llava_next", "outward"), ("llava_next", "inward"),
             ("llava_onevision", "outward")]


@pytest.mark.parametrize("kind,mask", CHEBYSHEV, ids=[f"{k}-{m}" for k, m in CHEBYSHEV])
def test_vllm_serves_the_chebyshev_mask_on_llava(tmp_path, kind, mask):
    """The comparison above under C2RoPEConfig(mask=mask), run twice on one engine: the
    second run finds the prompts' first 32-token blocks in vLLM's prefix cache, so image
    rows are also computed from a step that starts inside an image. The mask must matter:
    the prompt with an image at tokens 30 ... 45 gets log-probs more than 1e-3 away under
    the causal mask (so serving it causally fails the comparison)."""
    folder = str(tmp_path / kind)
    model = save_patched(folder, c2rope.C2RoPEConfig(mask=mask), kind)
    causal = tiny.CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(causal, c2rope.C2RoPEConfig(mask="causal"))  # same positions, causal mask
    processor = transformers.AutoProcessor.from_pretrained(folder)
    rng = random.Random(_seed())
    prompts = random_prompts(rng, videos=kind == "llava_onevision")
    # 30 words, then an image: the first 32-token block (cached after the first run) ends inside it.
    prompts.append({"prompt": f"{tiny.random_text(rng, 30, 30)} {tiny.IMAGE} {tiny.random_text(rng)}",
                    "multi_modal_data": {"image": [random_image(rng)]}})
    llm = make_llm(folder, kind, block_size=32, enable_prefix_caching=True, disable_chunked_mm_input=True)
    chebyshev_runs(llm, prompts, model, causal, lambda prompt: hf_inputs(processor, prompt),
                   model.config.text_config.vocab_size, suppressed(kind), tiny.SPECIALS.index(tiny.IMAGE))


def test_plugin_refuses_the_chebyshev_mask_with_chunked_images_on_llava(tmp_path):
    """vLLM's CPU default (chunked prefill, images chunked too) could compute part of an
    image in one step: refused when the model is built, naming the setting to pass."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(mask="outward"))
    with pytest.raises(Exception, match="Chebyshev") as caught:
        make_llm(folder)
    assert "disable_chunked_mm_input=True" in str(caught.value)
