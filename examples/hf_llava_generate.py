"""Generate with a C2RoPE-patched HF LLaVA (transformers 5.x), batched with left padding.

Runs on a tiny random LLaVA built in code (no downloads):

    python examples/hf_llava_generate.py

With a real checkpoint: `model = LlavaForConditionalGeneration.from_pretrained(...)`,
inputs from its processor, then the same `c2rope.patch_model` line.
"""
import torch

import c2rope
from llava_finetune import IMAGE_TOKEN, tiny_llava


def main(max_new_tokens: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    model = tiny_llava().eval()
    model.set_attn_implementation("sdpa")
    c2rope.patch_model(model, c2rope.C2RoPEConfig.paper_code())  # the paper's released choices

    # Two prompts of different lengths, left-padded as for batched generation.
    prompts = [torch.randint(1, IMAGE_TOKEN - 1, (n,)) for n in (30, 24)]
    for prompt in prompts:
        prompt[2:18] = IMAGE_TOKEN  # one 4x4 image per prompt (the processor expands <image>)
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = prompt
        attention_mask[row, width - len(prompt):] = 1
    pixel_values = torch.randn(len(prompts), 3, 8, 8)

    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                  max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, suppress_tokens=[IMAGE_TOKEN])
    tokens = model.generate(**kwargs)
    assert torch.equal(tokens, model.generate(**kwargs, use_cache=False))  # the KV cache changes nothing
    print("generated:", tokens[:, width:].tolist())
    return tokens


if __name__ == "__main__":
    main()
