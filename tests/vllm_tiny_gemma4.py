"""A tiny random Gemma 4 checkpoint (transformers' Gemma4ForConditionalGeneration: a
variable-resolution vision tower pooled 2x2, a Gemma 4 text model with sliding-window
layers and global layers on "proportional" rope that rotates a quarter of their wider
heads, optionally KV-shared last layers) written to a folder in code: weights, config, a
word-level tokenizer and Gemma 4's processor, nothing downloaded. Used by
tests/test_vllm_gemma4.py (the vLLM lane)."""
import random

import torch
import transformers

from vllm_common import word_tokenizer

WORDS = 96  # "w0" ... "w95"
BOI, EOI, IMAGE = "<|image>", "<image|>", "<|image|>"
AUDIO, BOA, EOA, VIDEO = "<|audio|>", "<|audio>", "<audio|>", "<|video|>"
SPECIALS = ["<eos>", "<bos>", BOI, EOI, IMAGE, VIDEO, AUDIO, BOA, EOA]
# Patches of 2x2 pixels pooled 2x2: an image is resized keeping its aspect ratio to at most
# 70 tokens (the processor's smallest max_soft_tokens), a grid of (ph / 2) x (pw / 2) tokens,
# rarely square. vLLM's CPU attention takes head sizes 32, 64, ...
PATCH, KERNEL, SOFT_TOKENS = 2, 2, 70
WINDOW = 8  # shorter than an image: the window matters inside images
LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention", "full_attention")


def tokenizer():
    return word_tokenizer(SPECIALS, WORDS, named={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE,
                                                  "audio_token": AUDIO, "boa_token": BOA, "eoa_token": EOA})


def make_model(seed=0, kv_shared=0, bidirectional="vision"):
    """(model, tokenizer): float32, eval mode, weights drawn from `seed`; kv_shared: how many
    last layers reuse an earlier layer's keys and values (the small Gemma 4 checkpoints do);
    bidirectional: the text config's use_bidirectional_attention."""
    torch.manual_seed(seed)
    tok, vocab = tokenizer()
    text = transformers.Gemma4TextConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=96, num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64, sliding_window=WINDOW,
        layer_types=list(LAYER_TYPES), vocab_size_per_layer_input=len(vocab), hidden_size_per_layer_input=8,
        use_bidirectional_attention=bidirectional, max_position_embeddings=1024, num_kv_shared_layers=kv_shared,
        bos_token_id=1, eos_token_id=0, pad_token_id=0)
    vision = transformers.Gemma4VisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=32, patch_size=PATCH, pooling_kernel_size=KERNEL, position_embedding_size=64)
    # vLLM 0.32 reads the tokens per image from here (stock vLLM stops with an AttributeError without it).
    vision.default_output_length = SOFT_TOKENS
    config = transformers.Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None, image_token_id=vocab[IMAGE],
        boi_token_id=vocab[BOI], eoi_token_id=vocab[EOI], video_token_id=vocab[VIDEO], audio_token_id=vocab[AUDIO],
        boa_token_id=vocab[BOA], eoa_token_index=vocab[EOA])
    model = transformers.Gemma4ForConditionalGeneration(config)
    # Larger weights than the init, so that attention (and thus the image rows' mask) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("layers" in name or "embed_vision" in name) and p.dim() == 2:
                p.normal_(0, 0.3)
    return model.float().eval(), tok


def save_tiny_gemma4(folder, seed=0, kv_shared=0, bidirectional="vision"):
    """Write the checkpoint and its processor to `folder`; returns (model, processor)."""
    model, tok = make_model(seed, kv_shared, bidirectional)
    images = transformers.Gemma4ImageProcessor(patch_size=PATCH, max_soft_tokens=SOFT_TOKENS,
                                               pooling_kernel_size=KERNEL)
    videos = transformers.Gemma4VideoProcessor(patch_size=PATCH, pooling_kernel_size=KERNEL)
    processor = transformers.Gemma4Processor(feature_extractor=transformers.Gemma4AudioFeatureExtractor(),
                                             image_processor=images, tokenizer=tok, video_processor=videos,
                                             image_seq_length=SOFT_TOKENS)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def random_text(rng: random.Random, low=2, high=8) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(low, high)))
