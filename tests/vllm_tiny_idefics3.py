"""A tiny random Idefics3 or SmolVLM checkpoint (transformers' Idefics3ForConditionalGeneration /
SmolVLMForConditionalGeneration: a SigLIP-style tower, a pixel-shuffle connector, a Llama text
model) written to a folder in code: weights, config, a word-level tokenizer holding the
processor's marker tokens, and the processor (image processor included), nothing downloaded.
Used by tests/test_vllm_idefics3.py (the vLLM lane) and tests/test_serving_config.py."""
import random

import torch
import transformers

from vllm_common import word_tokenizer

WORDS = 96  # "w0" ... "w95"
IMAGE = "<image>"
FAKE = "<fake_token_around_image>"
GLOBAL = "<global-img>"
# Tiles of 24x24 pixels in 2x2 patches: 12x12 patches, pixel-shuffled by scale_factor into
# a 6x6 grid (Idefics3, 36 tokens a tile) or a 4x4 grid (SmolVLM, 16 tokens a tile).
# Images are resized to a longest edge of 48 pixels and split into up to 2x2 tiles plus the
# global image. vLLM's CPU attention takes head sizes 32, 64, 80, ...: text 2 heads of 32,
# vision 2 heads of 32.
TILE_PIXELS, PATCH, LONGEST = 24, 2, 48
SCALE = {"idefics3": 2, "smolvlm": 3}
MAX_SPLIT = LONGEST // TILE_PIXELS
# End of text first (padding too), then the marker tokens the processors write around a
# tile: every one a token of its own, as in the published tokenizers ("\n" included, which
# the word-level tokenizer would otherwise drop as whitespace).
SPECIALS = (["<|endoftext|>", IMAGE, FAKE, GLOBAL, "<end_of_utterance>", "\n"]
            + [f"<row_{r}_col_{c}>" for r in range(1, MAX_SPLIT + 1) for c in range(1, MAX_SPLIT + 1)])
CLASSES = {"idefics3": transformers.Idefics3ForConditionalGeneration,
           "smolvlm": transformers.SmolVLMForConditionalGeneration}


def tile_tokens(kind):
    side = TILE_PIXELS // PATCH // SCALE[kind]
    return side * side


def make_model(seed=0, kind="idefics3"):
    """(model, tokenizer) in float32, eval mode; weights drawn from `seed`. kind: "idefics3"
    or "smolvlm"."""
    if kind not in CLASSES:
        raise ValueError(f"kind must be one of {sorted(CLASSES)}, got {kind!r}")
    torch.manual_seed(seed)
    tokenizer, vocab = word_tokenizer(SPECIALS, WORDS)
    text = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                    max_position_embeddings=1024, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                    rope_parameters={"rope_type": "default", "rope_theta": 100.0})
    tower = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                 image_size=TILE_PIXELS, patch_size=PATCH)
    common = dict(text_config=text, image_token_id=vocab[IMAGE], scale_factor=SCALE[kind], pad_token_id=0)
    if kind == "idefics3":
        config = transformers.Idefics3Config(vision_config=transformers.Idefics3VisionConfig(**tower), **common)
    else:
        config = transformers.SmolVLMConfig(vision_config=transformers.SmolVLMVisionConfig(**tower), **common)
    model = CLASSES[kind](config)
    # Larger weights than the 0.02 init, so that attention (and thus positions) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("text_model.layers" in name or "connector" in name) and p.dim() == 2:
                p.normal_(0, 0.3)
    return model.float().eval(), tokenizer


def make_processor(tokenizer, kind="idefics3"):
    sizes = dict(size={"longest_edge": LONGEST}, max_image_size={"longest_edge": TILE_PIXELS},
                 do_image_splitting=True)
    if kind == "idefics3":
        return transformers.Idefics3Processor(image_processor=transformers.Idefics3ImageProcessor(**sizes),
                                              tokenizer=tokenizer, image_seq_len=tile_tokens(kind))
    return transformers.SmolVLMProcessor(image_processor=transformers.SmolVLMImageProcessor(**sizes),
                                         video_processor=transformers.SmolVLMVideoProcessor(),
                                         tokenizer=tokenizer, image_seq_len=tile_tokens(kind))


def save_tiny_idefics3(folder, seed=0, kind="idefics3"):
    """Write a random tiny `kind` checkpoint (float32) and its processor to `folder`."""
    model, tokenizer = make_model(seed, kind)
    model.save_pretrained(folder)
    make_processor(tokenizer, kind).save_pretrained(folder)


def random_text(rng: random.Random, low=2, high=8) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(low, high)))
