"""LLaVA-style fine-tuning with C2RoPE: one line added to a training script.

Runs on a tiny random LLaVA built in code (no downloads):

    python examples/llava_finetune.py --steps 5

In a real LLaVA repo the model comes from `from_pretrained`; the only change is the
`c2rope.patch_model(...)` line. With the original LLaVA code (llava-torch on
transformers 4.37) it is the same line after `LlavaLlamaForCausalLM.from_pretrained(...)`:
c2rope records the image spans where LLaVA splices features into the embeddings.
"""
import argparse

import torch
import transformers

import c2rope

IMAGE_TOKEN = 95


def tiny_llava() -> transformers.LlavaForConditionalGeneration:
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=8, patch_size=2)  # 4x4 patches
    text = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                                      vision_feature_layer=-1)
    return transformers.LlavaForConditionalGeneration(config)


def make_batch(batch=4, seq=40, grid=(4, 4)):
    """Prompts '<text> <image: 16 tokens> <text>' with labels on the text after the image."""
    ids = torch.randint(1, IMAGE_TOKEN - 1, (batch, seq))
    start = 3
    ids[:, start:start + grid[0] * grid[1]] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, :start + grid[0] * grid[1]] = -100  # train on the answer only
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                pixel_values=torch.randn(batch, 3, 8, 8))


def main(steps: int = 5, lora: bool = False) -> list:
    torch.manual_seed(0)
    model = tiny_llava()
    model.set_attn_implementation("sdpa")  # eager, sdpa or flex_attention take the image mask
    c2rope.patch_model(model, c2rope.C2RoPEConfig())  # <- the one line (image id and grid from the config)
    if lora:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    # Non-reentrant checkpointing: with LoRA the frozen embeddings do not require grad, and
    # reentrant checkpointing (transformers 4.x's default) would then cut the graph.
    # transformers 5.25 renamed the method (activation_checkpointing_enable) and deprecated
    # the old name; older releases have only gradient_checkpointing_enable.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**make_batch()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f}")
    c2rope.unpatch_model(model)  # e.g. before exporting; the weights are the same either way
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (needs peft)")
    args = parser.parse_args()
    main(args.steps, args.lora)
