"""c2rope's vLLM plugin serving Idefics3 and SmolVLM (c2rope/vllm/idefics3.py) against
c2rope-patched transformers (the vLLM lane: scripts/vllm_lane.sh; skipped where vLLM is not
installed).

A tiny random Idefics3 or SmolVLM (tests/vllm_tiny_idefics3.py: 24 px tiles, images resized
to 48 px and split into up to 2 x 2 tiles plus the global image) is patched, recorded with
c2rope.record_config and saved; vLLM serves that folder through the plugin and must generate
what patched transformers generates: the same greedy tokens and log-probs within 1e-4, over
64 tokens, for a batch of text prompts and prompts with one image (one prompt two) of random
sizes, split into tiles or not (do_image_splitting=False: the global image alone). Same
standard as tests/test_vllm_llava.py, whose comparison (`compare`, tests/vllm_common.py) is used as is; text
prompts also match the unpatched model (plain RoPE), image prompts do not. The Chebyshev
mask: the same comparison, run twice on one engine with vLLM's prefix cache."""
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
import vllm_tiny_idefics3 as tiny  # noqa: E402
from c2rope.serving import SERVING_ARCHITECTURES  # noqa: E402
from vllm_common import check_batch, hf_logprobs, served_greedy, stock_vllm  # noqa: E402
MAX_MODEL_LEN = 1024
SUPPRESS = list(range(len(tiny.SPECIALS)))  # end of text, image and marker tokens: text tokens only


def _seed():
    return int(os.environ["C2ROPE_TEST_SEED"])


def save_patched(folder, config, kind):
    """The tiny checkpoint, patched, recorded and saved as a fine-tuned model would be."""
    tiny.save_tiny_idefics3(folder, seed=_seed(), kind=kind)
    model = tiny.CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(model, config)
    c2rope.record_config(model)
    model.save_pretrained(folder)
    return model


def make_llm(folder, **kwargs):
    return vllm.LLM(folder, dtype="float32", enforce_eager=True, max_model_len=MAX_MODEL_LEN, max_num_seqs=8,
                    limit_mm_per_prompt={"image": 2}, seed=0, **kwargs)


def random_image(rng):
    # Any size: the processor resizes it to a longest edge of 48 px, then to whole tiles
    # (1 x 2, 2 x 1 or 2 x 2 of 24 px, as the aspect ratio gives), plus the global image.
    height, width = rng.randint(3, 60), rng.randint(3, 60)
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_prompt(rng, count, before=None, split=True):
    """`count` images (random sizes) among random words; split=False: the processor keeps
    every image whole (do_image_splitting=False: the global image alone, no row tags)."""
    text, images = tiny.random_text(rng, 1, 4) if before is None else before, []
    for _ in range(count):
        images.append(random_image(rng))
        between = tiny.random_text(rng, 1, 4) if rng.random() < 0.5 else ""
        text += f" {tiny.IMAGE} {between}"
    prompt = {"prompt": text.strip(), "multi_modal_data": {"image": images}}
    if not split:
        prompt["mm_processor_kwargs"] = {"do_image_splitting": False}
    return prompt


def random_prompts(rng):
    """Two text prompts, three prompts with one image (one of them kept whole, one split,
    one either), one with two images (split or not); shuffled."""
    prompts = [{"prompt": tiny.random_text(rng)} for _ in range(2)]
    for count, split in ((1, False), (1, True), (1, rng.random() < 0.5), (2, rng.random() < 0.7)):
        prompts.append(image_prompt(rng, count, split=split))
    rng.shuffle(prompts)
    return prompts


def hf_inputs(processor, prompt):
    return processor(text=[prompt["prompt"]], images=prompt.get("multi_modal_data", {}).get("image"),
                     return_tensors="pt", **prompt.get("mm_processor_kwargs", {}))


# The default split on raster m, and the paper's (concentric m: an image's mean m is any
# rational, merged coordinates, blocked split), both causal; the Chebyshev mask: CHEBYSHEV.
SERVED = [(kind, name) for kind in tiny.CLASSES for name in ("causal", "paper-causal")]


@pytest.mark.parametrize("kind,name", SERVED, ids=[f"{k}-{n}" for k, n in SERVED])
def test_vllm_serves_idefics3_as_patched_hf_generates(tmp_path, kind, name):
    folder = str(tmp_path / kind)
    model = save_patched(folder, c2rope.C2RoPEConfig.from_name(name), kind)
    stock = tiny.CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    prompts = random_prompts(random.Random(_seed()))
    served = served_greedy(make_llm(folder), prompts, model.config.text_config.vocab_size, SUPPRESS)
    check_batch(model, stock, prompts, served, lambda prompt: hf_inputs(processor, prompt), SUPPRESS)


@pytest.mark.parametrize("kind", list(tiny.CLASSES))
def test_stock_vllm_refuses_a_recorded_idefics3(tmp_path, kind):
    """Without the plugin (VLLM_PLUGINS names only vLLM's own), vLLM does not know the
    serving architecture the folder names, and refuses to build it."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(mask="causal"), kind)
    code, output = stock_vllm(folder, max_model_len=MAX_MODEL_LEN)
    assert code == 3, output[-3000:]
    assert SERVING_ARCHITECTURES[tiny.CLASSES[kind].__name__] in output


# The Chebyshev mask (c2rope/vllm/chebyshev.py on vLLM's CPU backend): one ring set per tile.
CHEBYSHEV = [("idefics3", "default"), ("smolvlm", "default"), ("idefics3", "paper")]


@pytest.mark.parametrize("kind,name", CHEBYSHEV, ids=[f"{k}-{n}" for k, n in CHEBYSHEV])
def test_vllm_serves_the_chebyshev_mask_on_idefics3(tmp_path, kind, name):
    """The comparison above under the Chebyshev mask ("default": outward, "paper": inward),
    run twice on one engine: the second run finds the prompts' first 32-token blocks in
    vLLM's prefix cache, so tile rows are also computed from a step that starts inside a
    tile. The mask must matter: the prompt with 36 words before its image (tokens 64 on
    lie inside a tile) gets log-probs more than 1e-3 away under the causal mask."""
    folder = str(tmp_path / kind)
    config = c2rope.C2RoPEConfig.from_name(name)
    assert config.mask != "causal"
    model = save_patched(folder, config, kind)
    causal = tiny.CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(causal, c2rope.C2RoPEConfig.from_name(f"{name}-causal"))  # same positions, causal mask
    processor = transformers.AutoProcessor.from_pretrained(folder)
    rng = random.Random(_seed())
    prompts = random_prompts(rng)
    # 36 words, <fake>, a tag, then tiles: the second 32-token block (cached after the first run) ends inside one.
    last = image_prompt(rng, 1, before=tiny.random_text(rng, 36, 36))
    prompts.append(last)
    llm = make_llm(folder, block_size=32, enable_prefix_caching=True, disable_chunked_mm_input=True)
    image_token = tiny.SPECIALS.index(tiny.IMAGE)
    inside = 0
    for run in range(2):
        cached = []
        served = served_greedy(llm, prompts, model.config.text_config.vocab_size, SUPPRESS, cached)
        check_batch(model, None, prompts, served, lambda prompt: hf_inputs(processor, prompt), SUPPRESS)
        if run == 0:
            inputs = hf_inputs(processor, last)
            away = (hf_logprobs(causal, inputs, served[-1][1]) - hf_logprobs(model, inputs, served[-1][1]))
            assert away.abs().max().item() > 1e-3, "the causal mask gives nearly the same log-probs"
        for (ids, _, _), hits in zip(served, cached):
            inside += run == 1 and 0 < hits < len(ids) and ids[hits - 1] == ids[hits] == image_token
    assert inside >= 1, "no prompt of the second run started inside a tile"


def test_plugin_refuses_the_chebyshev_mask_with_chunked_images_on_idefics3(tmp_path):
    """vLLM's CPU default (chunked prefill, images chunked too) could compute part of an
    image in one step: refused when the model is built, naming the setting to pass."""
    folder = str(tmp_path / "model")
    save_patched(folder, c2rope.C2RoPEConfig(mask="outward"), "smolvlm")
    with pytest.raises(Exception, match="Chebyshev") as caught:
        make_llm(folder)
    assert "disable_chunked_mm_input=True" in str(caught.value)


def test_plugin_refuses_tiles_outside_the_placed_images():
    """The check of get_mrope_input_positions: every tile lies inside an image vLLM placed,
    each image holding the tiles vLLM encodes for it (num_patches); otherwise ValueError."""
    from types import SimpleNamespace

    from c2rope.vllm.idefics3 import C2RoPETilesMixin

    owner = SimpleNamespace(c2rope_geometry=SimpleNamespace(tokens=4))

    def image(offset, length, patches):
        data = {"num_patches": SimpleNamespace(data=torch.tensor(patches))}
        return SimpleNamespace(mm_position=SimpleNamespace(offset=offset, length=length), data=data)

    spans = [(3, 2, 2), (9, 2, 2), (20, 2, 2)]  # two tiles in the first image, one in the second
    check = C2RoPETilesMixin._item_starts
    assert check(owner, spans, [image(1, 14, 2), image(18, 7, 1)]) == [1, 18]
    with pytest.raises(ValueError, match="holds 2 tile"):
        check(owner, spans, [image(1, 14, 3), image(18, 7, 1)])
    with pytest.raises(ValueError, match=r"image tokens at \[20\] belong to no image"):
        check(owner, spans, [image(1, 14, 2)])
    with pytest.raises(ValueError, match="holds 0 tile"):
        check(owner, spans[:2], [image(1, 14, 2), image(18, 7, 1)])
