"""A tiny random Qwen2-VL / Qwen2.5-VL checkpoint written to a folder in code (weights,
config, a word-level tokenizer and the image processor): what vLLM needs to serve it,
with nothing downloaded. Used by tests/test_vllm*.py (the vLLM lane)."""
import random

import torch
import transformers

WORDS = 96  # "w0" ... "w95"
SPECIALS = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
PATCH, MERGE, TEMPORAL = 2, 2, 2
# vLLM's CPU attention takes head sizes 32, 64, 80, ...: 2 heads of 32, M-RoPE on 16 slots.
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=1024)
SECTION = [4, 6, 6]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIALS + [f"w{i}" for i in range(WORDS)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:])
    return tokenizer, vocab


def save_tiny_qwen(folder, kind="qwen2_vl", seed=0, section=SECTION, **text_sizes):
    """Write a random tiny `kind` checkpoint (float32) to `folder`; returns the vocabulary.
    `text_sizes` override the text model's sizes (TEXT), e.g. for a benchmark; `section`
    (the M-RoPE split) must sum to half the head size."""
    torch.manual_seed(seed)
    tokenizer, vocab = _tokenizer()
    ids = dict(image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
               vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    text = dict(TEXT, **text_sizes, vocab_size=len(vocab), bos_token_id=0, eos_token_id=0, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 100.0, "mrope_section": list(section)})
    vision = dict(depth=1, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL,
                  in_channels=3)
    if kind == "qwen2_vl":
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=dict(vision, embed_dim=64,
                                                                                  hidden_size=text["hidden_size"],
                                                                                  mlp_ratio=2), **ids)
        model = transformers.Qwen2VLForConditionalGeneration(config)
    elif kind == "qwen2_5_vl":
        config = transformers.Qwen2_5_VLConfig(
            text_config=text, vision_config=dict(vision, hidden_size=64, intermediate_size=96, out_hidden_size=text["hidden_size"],
                                                 window_size=8, fullatt_block_indexes=[0]), **ids)
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    else:
        raise ValueError(f"kind must be 'qwen2_vl' or 'qwen2_5_vl', got {kind!r}")
    # Larger weights than the 0.02 init, so that attention (and thus positions) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.normal_(0, 0.3)
    model = model.float().eval()
    images = transformers.Qwen2VLImageProcessor(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
        size={"shortest_edge": 16, "longest_edge": 24 * 24})
    videos = transformers.Qwen2VLVideoProcessor(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
        size={"shortest_edge": 16, "longest_edge": 24 * 24})
    processor = transformers.Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return vocab


def random_text(rng: random.Random, low=2, high=8) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(low, high)))


IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
