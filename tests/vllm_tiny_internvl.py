"""A tiny random InternVL checkpoint (transformers' InternVLForConditionalGeneration, the
"-HF" format: InternViT tower, pixel shuffle, Qwen2 text model) written to a folder in
code: weights, config, a word-level tokenizer with InternVL's named image tokens and the
processor (GotOcr2 tiling, InternVL video processor), nothing downloaded. Used by
tests/test_vllm_internvl.py (the vLLM lane)."""
import random

import torch
import transformers

from vllm_common import word_tokenizer

WORDS = 96  # "w0" ... "w95"
IMAGE, START, END, VIDEO = "<IMG_CONTEXT>", "<img>", "</img>", "<video>"
SPECIALS = ["<|endoftext|>", IMAGE, START, END, VIDEO]
# A tile of 16x16 pixels in 2x2 patches: 8x8 patches, pixel-shuffled by 0.5 into a 4x4
# grid, 16 image tokens per tile. vLLM's CPU attention takes head sizes 32, 64, 80, ...:
# text 2 heads of 32, vision 2 heads of 32.
PIXELS, PATCH = 16, 2
SIDE = PIXELS // PATCH // 2
# Up to MAX_TILES tiles per image (GotOcr2's crop_to_patches), plus a thumbnail when
# there is more than one: an image is 1 to MAX_TILES + 1 tiles, from its aspect ratio.
MAX_TILES = 4


def make_tokenizer():
    """(tokenizer, vocab): InternVL's processor reads the named tokens
    (tokenizer.context_image_token, .start_image_token, ...) off the tokenizer."""
    named = {"context_image_token": IMAGE, "start_image_token": START, "end_image_token": END, "video_token": VIDEO}
    return word_tokenizer(SPECIALS, WORDS, named)


def make_model(seed=0):
    """(model, tokenizer) in float32, eval mode; weights drawn from `seed`."""
    torch.manual_seed(seed)
    tokenizer, vocab = make_tokenizer()
    vision = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                  image_size=[PIXELS, PIXELS], patch_size=[PATCH, PATCH])
    text = transformers.Qwen2Config(vocab_size=len(vocab), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                    max_position_embeddings=1024, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                    rope_parameters={"rope_type": "default", "rope_theta": 100.0})
    config = transformers.InternVLConfig(vision_config=vision, text_config=text.to_dict(),
                                         image_token_id=vocab[IMAGE], image_seq_length=SIDE * SIDE,
                                         downsample_ratio=0.5, vision_feature_layer=-1,
                                         vision_feature_select_strategy="default")
    model = transformers.InternVLForConditionalGeneration(config)
    # Larger weights than the 0.02 init, so that attention (and thus positions) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("language_model" in name and "layers" in name or "projector" in name) and p.dim() == 2:
                p.normal_(0, 0.3)
    return model.float().eval(), tokenizer


def save_tiny_internvl(folder, seed=0):
    """Write a random tiny InternVL checkpoint (float32) and its processor to `folder`."""
    model, tokenizer = make_model(seed)
    tile = {"height": PIXELS, "width": PIXELS}
    images = transformers.GotOcr2ImageProcessor(size=tile, crop_to_patches=True, min_patches=1,
                                                    max_patches=MAX_TILES)
    videos = transformers.InternVLVideoProcessor(size=tile)
    processor = transformers.InternVLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos,
                                               image_seq_length=SIDE * SIDE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def random_text(rng: random.Random, low=2, high=8) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(low, high)))
