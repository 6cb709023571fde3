"""c2rope's vLLM plugin against c2rope-patched transformers (the vLLM lane:
scripts/vllm_lane.sh; skipped where vLLM is not installed).

A tiny random Qwen2-VL / Qwen2.5-VL is patched with C2RoPEConfig(mask="causal"), recorded
with c2rope.record_config and saved; vLLM serves that folder through the plugin (found by
its entry point) and must generate what patched transformers generates: the same greedy
tokens and log-probs within 1e-4, over 64 tokens, for a batch of text, image and video prompts."""
import os
import random
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is written in code
# vLLM's engine in this process (refusals surface as the plugin's own exception, and the
# comparison reads both sides in one process), and a small CPU KV cache (GiB).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM tests run in scripts/vllm_lane.sh")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

import c2rope  # noqa: E402
import vllm_tiny  # noqa: E402

NEW_TOKENS = 64
TOLERANCE = 1e-4
HF_CLASSES = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
              "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}


def _seed():
    return int(os.environ["C2ROPE_TEST_SEED"])


def save_patched(folder, kind, config, options=None):
    """The tiny checkpoint, patched, recorded and saved as a fine-tuned model would be."""
    vllm_tiny.save_tiny_qwen(folder, kind, seed=_seed())
    model = HF_CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(model, config, options=options)
    c2rope.record_config(model)
    model.save_pretrained(folder)
    return model


def make_llm(folder, **kwargs):
    return vllm.LLM(folder, dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=8,
                    limit_mm_per_prompt={"image": 2, "video": 1}, seed=0, **kwargs)


def random_image(rng):
    # Sides the processor keeps (multiples of patch * merge = 4, at most 576 pixels).
    height, width = rng.choice([4, 8, 12, 16]), rng.choice([4, 8, 12, 16, 20])
    pixels = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def random_video(rng):
    # Frames of height 8 or 12: a first side of 4 would make transformers read the array channels-first.
    frames, height, width = rng.choice([2, 4]), rng.choice([8, 12]), rng.choice([4, 8, 12])
    return np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def random_prompts(rng):
    """Two text prompts, three image prompts (one with two images), a video prompt and an
    image + video prompt, shuffled."""
    prompts = [{"prompt": vllm_tiny.random_text(rng)} for _ in range(2)]
    for images, videos in ((1, 0), (1, 0), (2, 0), (0, 1), (1, 1)):
        text, data = vllm_tiny.random_text(rng, 1, 4), {}
        for kind, count, placeholder, make in (("image", images, vllm_tiny.IMAGE, random_image),
                                               ("video", videos, vllm_tiny.VIDEO, random_video)):
            for _ in range(count):
                data.setdefault(kind, []).append(make(rng))
                text += " " + placeholder + " " + vllm_tiny.random_text(rng, 1, 4)
        prompts.append({"prompt": text, "multi_modal_data": data})
    rng.shuffle(prompts)
    return prompts


def hf_greedy(model, processor, prompt, suppress):
    data = prompt.get("multi_modal_data", {})
    inputs = processor(text=[prompt["prompt"]], images=data.get("image"), videos=data.get("video"),
                       do_sample_frames=False, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, suppress_tokens=suppress,
                         output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logprobs = torch.stack([torch.log_softmax(step[0].double(), dim=-1) for step in out.logits])
    return inputs["input_ids"][0].tolist(), tokens, logprobs


def vllm_greedy(llm, prompts, vocab_size, suppress):
    allowed = [i for i in range(vocab_size) if i not in suppress]
    params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1,
                                 allowed_token_ids=allowed)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    results = []
    for out in outputs:
        completion = out.outputs[0]
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
        results.append((list(out.prompt_token_ids), list(completion.token_ids), logprobs))
    return results


# (family, C2RoPEConfig.from_name, options): the default configuration; the paper's
# (concentric m: an image's mean m is any rational, merged coordinates) on c2rope's
# frequency split; the recommended one (shared, half-integer m) on the model's sections.
SERVED = [("qwen2_vl", "causal", None),
          ("qwen2_5_vl", "paper-causal", {"frequencies": "c2rope"}),
          ("qwen2_5_vl", "recommended-causal", None)]


@pytest.mark.parametrize("kind,name,options", SERVED, ids=[f"{k}-{n}-{o}" for k, n, o in SERVED])
def test_vllm_serves_what_patched_hf_generates(tmp_path, kind, name, options):
    folder = str(tmp_path / kind)
    model = save_patched(folder, kind, c2rope.C2RoPEConfig.from_name(name), options)
    stock = HF_CLASSES[kind].from_pretrained(folder, dtype=torch.float32).eval()  # unpatched: its own M-RoPE
    processor = transformers.AutoProcessor.from_pretrained(folder)
    suppress = list(range(len(vllm_tiny.SPECIALS)))  # end of text and the vision specials: text tokens only
    rng = random.Random(_seed())
    prompts = random_prompts(rng)
    llm = make_llm(folder)
    served = vllm_greedy(llm, prompts, model.config.text_config.vocab_size, suppress)
    for prompt, (prompt_ids, tokens, logprobs) in zip(prompts, served):
        hf_ids, hf_tokens, hf_logprobs = hf_greedy(model, processor, prompt, suppress)
        assert prompt_ids == hf_ids, "vLLM and transformers tokenised the prompt differently"
        assert len(tokens) == NEW_TOKENS
        assert tokens == hf_tokens, f"greedy tokens differ for {prompt['prompt']!r}"
        mine = hf_logprobs[torch.arange(NEW_TOKENS), torch.tensor(tokens)]
        diff = (torch.tensor(logprobs, dtype=torch.float64) - mine).abs().max().item()
        assert diff <= TOLERANCE, f"log-probs differ by {diff:.2e} for {prompt['prompt']!r}"
        if "multi_modal_data" in prompt:  # the comparison sees positions: the model's own give other numbers
            _, stock_tokens, stock_logprobs = hf_greedy(stock, processor, prompt, suppress)
            assert stock_tokens != tokens or (stock_logprobs - hf_logprobs).abs().max() > 1e-3



STOCK_SCRIPT = """
import sys
from vllm import LLM
try:
    LLM(sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=1024)
except Exception as exc:
    print("REFUSED:", type(exc).__name__, exc)
    sys.exit(3)
print("SERVED")
"""


def test_stock_vllm_refuses_a_recorded_checkpoint(tmp_path):
    """Without the plugin (VLLM_PLUGINS names only vLLM's own), vLLM does not know the
    serving architecture the folder names, and refuses to build it."""
    folder = str(tmp_path / "model")
    save_patched(folder, "qwen2_vl", c2rope.C2RoPEConfig(mask="causal"))
    env = dict(os.environ, VLLM_PLUGINS="lora_filesystem_resolver", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, folder], env=env, capture_output=True, text=True,
                         timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 3, output[-3000:]
    assert "C2RoPEQwen2VLForConditionalGeneration" in output


@pytest.mark.parametrize("mask", ["outward", "inward"])
def test_plugin_refuses_the_chebyshev_mask(tmp_path, mask):
    folder = str(tmp_path / "model")
    save_patched(folder, "qwen2_vl", c2rope.C2RoPEConfig(mask=mask))
    with pytest.raises(Exception, match="Chebyshev") as caught:
        make_llm(folder)
    assert f"mask={mask!r}" in str(caught.value)


def _config(entry, **extra):
    return type("Config", (), {"c2rope": entry, **extra})()


def test_check_servable_refusals():
    from c2rope.serving import config_entry
    from c2rope.vllm.qwen import check_servable

    with pytest.raises(ValueError, match="no 'c2rope' entry"):
        check_servable(_config(None))
    with pytest.raises(ValueError, match="C2RoPEConfig only"):
        check_servable(_config(config_entry(c2rope.CircleRoPEConfig())))
    with pytest.raises(ValueError, match="frame_axis"):
        check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="causal"), {"frame_axis": "separate"})))
    with pytest.raises(ValueError, match="Chebyshev"):
        check_servable(_config(config_entry(c2rope.C2RoPEConfig())))
    recorded = check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="causal"))))
    assert recorded["config"] == c2rope.C2RoPEConfig(mask="causal")
