"""Throughput of a C2RoPE-patched Qwen2-VL served by vLLM (c2rope's plugin) against the
same model in transformers' generate (c2rope.patch_model), on the same prompts.

Run in the vLLM lane's venv (scripts/vllm_lane.sh builds it), from the repository root:

    VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 \
        .venv-vllm/bin/python benchmarks/bench_vllm_serving.py --requests 8 --new-tokens 64

(vLLM as it runs by default: its engine in a process of its own, where the plugin is
loaded through its entry point, and the model compiled with torch.compile.)

A random model (nothing downloaded): text model hidden 512, 4 layers, 8 heads of 64;
every request is text + one 16x16-pixel image (16 image tokens); greedy, no EOS stop.
Both sides run float32 on the CPU; transformers gets all requests as one left-padded
batch. Prints generated tokens per second (model load and vLLM start-up excluded).
"""
import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers
    from PIL import Image
    import vllm

    import c2rope
    import vllm_tiny

    folder = tempfile.mkdtemp()
    vllm_tiny.save_tiny_qwen(folder, "qwen2_vl", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=8, section=[8, 12, 12])
    model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"))
    c2rope.record_config(model)
    model.save_pretrained(folder)
    rng = random.Random(0)
    texts = [f"{vllm_tiny.random_text(rng, 4, 8)} {vllm_tiny.IMAGE} {vllm_tiny.random_text(rng, 4, 8)}"
             for _ in range(args.requests)]
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8))
              for i in range(args.requests)]
    suppress = [0, 1, 2, 3, 4]
    total = args.requests * args.new_tokens

    stock = transformers.Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.no_grad():
        hf_out = model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                do_sample=False, suppress_tokens=suppress)
    hf_tokens = hf_out[:, inputs["input_ids"].shape[1]:].tolist()
    start = time.perf_counter()
    with torch.no_grad():  # the same model without c2rope: what the patch costs in transformers
        stock.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                       suppress_tokens=suppress)
    stock_seconds = time.perf_counter() - start
    hf_seconds = time.perf_counter() - start

    llm = vllm.LLM(folder, dtype="float32", max_model_len=1024, max_num_seqs=args.requests,
                   limit_mm_per_prompt={"image": 1, "video": 0}, seed=0)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True,
                                 allowed_token_ids=[i for i in range(model.config.text_config.vocab_size)
                                                    if i not in suppress])
    prompts = [{"prompt": t, "multi_modal_data": {"image": im}} for t, im in zip(texts, images)]
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up (first-call compilation)
    start = time.perf_counter()
    served = llm.generate(prompts, params, use_tqdm=False)
    vllm_seconds = time.perf_counter() - start
    same = sum(list(out.outputs[0].token_ids) == tokens for out, tokens in zip(served, hf_tokens))
    print(f"{args.requests} requests x {args.new_tokens} new tokens, torch threads {torch.get_num_threads()}: "
          f"transformers generate {total / hf_seconds:.1f} tok/s ({hf_seconds:.1f} s; unpatched "
          f"{total / stock_seconds:.1f} tok/s), "
          f"vLLM + c2rope plugin {total / vllm_seconds:.1f} tok/s ({vllm_seconds:.1f} s), "
          f"x{hf_seconds / vllm_seconds:.2f}; same greedy tokens in {same}/{args.requests} requests")


if __name__ == "__main__":
    main()
