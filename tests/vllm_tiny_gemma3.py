"""A tiny random Gemma 3 checkpoint (transformers' Gemma3ForConditionalGeneration: SigLIP
vision tower, Gemma 3 text model with a sliding-window layer and a global layer on their
own rope bases) written to a folder in code: weights, config, a word-level tokenizer and
Gemma 3's processor, nothing downloaded. Used by tests/test_vllm_gemma3.py (the vLLM lane),
which measures why c2rope.record_config refuses Gemma 3 (c2rope/hf/serving.py NOT_SERVED)."""
import os
import random

import torch
import transformers

from vllm_common import word_tokenizer

WORDS = 96  # "w0" ... "w95"
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
# vLLM's Gemma 3 processor merges the newlines it writes around an image with the prompt's
# and looks these four up in the vocabulary (the word-level tokenizer drops whitespace, so
# they never occur in a prompt).
NEWLINES = ["\n", "\n\n", "\n\n\n", "\n\n\n\n"]
SPECIALS = ["<eos>", "<bos>", BOI, EOI, IMAGE] + NEWLINES
# SigLIP on 16x16 pixels in 2x2 patches (8x8), pooled by the projector to 4x4 = 16 image
# tokens. vLLM's CPU attention takes head sizes 32, 64, ...: text and vision heads of 32.
PIXELS, PATCH, SIDE = 16, 2, 4
WINDOW = 8  # shorter than an image run (16 tokens + boi / eoi): the window matters inside images
LAYER_TYPES = ("sliding_attention", "full_attention")


def tokenizer():
    return word_tokenizer(SPECIALS, WORDS, named={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE})


def make_model(seed=0, linear=None):
    """(model, tokenizer): float32, eval mode, weights drawn from `seed`; linear: the global
    layers' linear rope scaling factor (gemma-3-4b-it has 8), None for none."""
    torch.manual_seed(seed)
    tok, vocab = tokenizer()
    global_rope = {"rope_type": "default", "rope_theta": 1000.0}
    if linear is not None:
        global_rope = {"rope_type": "linear", "factor": float(linear), "rope_theta": 1000.0}
    vision = transformers.SiglipVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=PIXELS, patch_size=PATCH)
    text = transformers.Gemma3TextConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=96, num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=WINDOW,
        layer_types=list(LAYER_TYPES), max_position_embeddings=1024, bos_token_id=1, eos_token_id=0,
        pad_token_id=0, rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                         "full_attention": global_rope})
    config = transformers.Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=SIDE * SIDE,
                                       image_token_id=vocab[IMAGE], boi_token_id=vocab[BOI],
                                       eoi_token_id=vocab[EOI])
    model = transformers.Gemma3ForConditionalGeneration(config)
    # Larger weights than the 0.02 init, so that attention (and thus the image rows' mask) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("layers" in name or "projector" in name) and p.dim() == 2:
                p.normal_(0, 0.3)
    return model.float().eval(), tok


def save_tiny_gemma3(folder, seed=0, linear=None):
    """Write the checkpoint and its processor to `folder`; returns (model, processor)."""
    model, tok = make_model(seed, linear)
    images = transformers.Gemma3ImageProcessor(size={"height": PIXELS, "width": PIXELS})
    processor = transformers.Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=SIDE * SIDE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _published_vision_names(folder)
    return model, processor


def _published_vision_names(folder):
    """transformers 5 saves the vision tower without its `vision_model.` level, which
    vLLM 0.32's Gemma 3 loader does not map (it stops on "vision_tower.embeddings");
    the published checkpoints have it, so the folder gets their names."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    level = "vision_tower."
    tensors = {(level + "vision_model." + k[len(level):] if k.startswith(level) else k): v
               for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def random_text(rng: random.Random, low=2, high=8) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(low, high)))
