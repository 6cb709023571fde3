"""A tiny random LLaVA, LLaVA-NeXT or LLaVA-OneVision checkpoint (transformers'
LlavaForConditionalGeneration / LlavaNextForConditionalGeneration /
LlavaOnevisionForConditionalGeneration: CLIP vision tower, Llama text model; OneVision's
Qwen2, as published) written to a folder in code: weights, config, a word-level tokenizer and the image processor, nothing
downloaded. Used by
tests/test_vllm_llava.py (the vLLM lane) and tests/test_serving_config.py."""
import random

import torch
import transformers

from vllm_common import word_tokenizer

WORDS = 96  # "w0" ... "w95"
SPECIALS = ["<|endoftext|>", "<image>"]
IMAGE = "<image>"
VIDEO = "<video>"  # LLaVA-OneVision's video placeholder: a third special token there
# CLIP on 8x8 pixels in 2x2 patches: a 4x4 grid, 16 image tokens per image (the CLS
# token dropped by the "default" feature strategy). vLLM's CPU attention takes head
# sizes 32, 64, 80, ...: text 2 heads of 32, vision 2 heads of 32.
PIXELS, PATCH = 8, 2
GRID = (PIXELS // PATCH, PIXELS // PATCH)
# LLaVA-NeXT: the tile grids anyres picks from (1x2, 2x1, 2x2 tiles of 8x8 pixels).
PINPOINTS = [[8, 16], [16, 8], [16, 16]]
# LLaVA-OneVision: also 4x4 tiles (a 16x16 high-res grid, 256 tokens), which anyres_max_9
# (a budget of 9 tiles, 144 tokens) shrinks to 12x12: large images exercise the shrink.
ONEVISION_PINPOINTS = PINPOINTS + [[16, 32], [32, 16], [32, 32]]
ASPECT = "anyres_max_9"
CLASSES = {"llava": transformers.LlavaForConditionalGeneration,
           "llava_next": transformers.LlavaNextForConditionalGeneration,
           "llava_onevision": transformers.LlavaOnevisionForConditionalGeneration}


def specials(kind="llava"):
    """The special tokens of `kind`'s tokenizer (ids 0 ...): end of text, the image token,
    OneVision's video token."""
    return SPECIALS + [VIDEO] if kind == "llava_onevision" else list(SPECIALS)


def _tokenizer(kind="llava"):
    return word_tokenizer(specials(kind), WORDS)


def make_model(seed=0, kind="llava"):
    """(model, tokenizer) in float32, eval mode; weights drawn from `seed`. kind: "llava",
    "llava_next" or "llava_onevision"."""
    if kind not in CLASSES:
        raise ValueError(f"kind must be one of {sorted(CLASSES)}, got {kind!r}")
    torch.manual_seed(seed)
    tokenizer, vocab = _tokenizer(kind)
    vision = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=PIXELS, patch_size=PATCH,
                                           projection_dim=64)
    # OneVision's published checkpoints have a Qwen2 text model (biased q, k, v), the others Llama.
    text_class = transformers.Qwen2Config if kind == "llava_onevision" else transformers.LlamaConfig
    text = text_class(vocab_size=len(vocab), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0,
                      rope_parameters={"rope_type": "default", "rope_theta": 100.0})
    common = dict(vision_config=vision, text_config=text, image_token_id=vocab[IMAGE], vision_feature_layer=-1,
                  vision_feature_select_strategy="default")
    if kind == "llava":
        config = transformers.LlavaConfig(**common)
    elif kind == "llava_next":
        config = transformers.LlavaNextConfig(**common, image_grid_pinpoints=PINPOINTS)
    else:
        config = transformers.LlavaOnevisionConfig(**common, image_grid_pinpoints=ONEVISION_PINPOINTS,
                                                   vision_aspect_ratio=ASPECT, video_token_id=vocab[VIDEO])
    model = CLASSES[kind](config)
    # Larger weights than the 0.02 init, so that attention (and thus positions) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("layers" in name or "projector" in name) and p.dim() == 2:
                p.normal_(0, 0.3)
            if "image_newline" in name:
                p.normal_(0, 1.0)
    return model.float().eval(), tokenizer


def save_tiny_llava(folder, seed=0, kind="llava"):
    """Write a random tiny `kind` checkpoint (float32) and its processor to `folder`."""
    model, tokenizer = make_model(seed, kind)
    sizes = dict(size={"shortest_edge": PIXELS}, crop_size={"height": PIXELS, "width": PIXELS})
    text = dict(tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default", image_token=IMAGE,
                num_additional_image_tokens=1)
    if kind == "llava":
        processor = transformers.LlavaProcessor(image_processor=transformers.CLIPImageProcessor(**sizes), **text)
    elif kind == "llava_next":
        images = transformers.LlavaNextImageProcessor(**sizes, image_grid_pinpoints=PINPOINTS)
        processor = transformers.LlavaNextProcessor(image_processor=images, **text)
    else:  # num_image_tokens: the tower's tokens, CLS included ("default" drops it)
        tile = {"height": PIXELS, "width": PIXELS}
        images = transformers.LlavaOnevisionImageProcessor(size=tile, image_grid_pinpoints=ONEVISION_PINPOINTS)
        videos = transformers.LlavaOnevisionVideoProcessor(size=tile)
        text.pop("patch_size"), text.pop("num_additional_image_tokens")
        processor = transformers.LlavaOnevisionProcessor(
            image_processor=images, video_processor=videos, num_image_tokens=GRID[0] * GRID[1] + 1, video_token=VIDEO,
            vision_aspect_ratio=ASPECT, **text)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def random_text(rng: random.Random, low=2, high=8) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(low, high)))
