"""Tiny random VLMs with a matching processor, and a tiny image-text dataset, all built in
code (no downloads), for driving real trainers (TRL's SFTTrainer, HF Trainer + DeepSpeed)
the way their users do: PIL images and text in, the trainer's own collator out.

The tokenizer is a word-level `tokenizers` model over a fixed vocabulary whose special
tokens sit at the ids the tiny model configs use (qwen_tiny's 60-63, LLaVA's 95)."""
import random

import torch
import transformers

import qwen_tiny

FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "qwen3_vl")
WORDS = [f"w{i}" for i in range(40)]  # plain text words, ids 3..42
LLAVA_IMAGE = 95  # test_hf_common.IMG
PINPOINTS = [[8, 16], [16, 8], [16, 16]]  # LLaVA-NeXT tiles of 8x8 pixels


def _tokenizer(vocab_size, specials):
    """A word-level fast tokenizer: <pad>=0, <s>=1, </s>=2, the words, then `specials`
    ({token: id}) as added special tokens, so "<image>" splits out of "a<image>b"."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({w: 3 + i for i, w in enumerate(WORDS)})
    free = [i for i in range(len(vocab), vocab_size) if i not in specials.values()]
    for i in free:  # fill the rest so every id decodes
        vocab[f"<unused{i}>"] = i
    vocab.update(specials)
    core = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                               pad_token="<pad>", unk_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in specials.items())
    return tok


def _heavier(model):
    """Larger weights than the 0.02 init, so attention (thus positions and the mask) moves
    the loss well beyond bf16 noise."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and "layers" in name and p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def _llava(kind):
    from test_hf_common import text_config

    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=8, patch_size=2, projection_dim=32)
    text = text_config("llama", num_hidden_layers=2)
    if kind == "llava":
        config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=LLAVA_IMAGE,
                                          vision_feature_layer=-1)
        model = transformers.LlavaForConditionalGeneration(config)
        images = transformers.CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        processor_cls = transformers.LlavaProcessor
    else:
        config = transformers.LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=LLAVA_IMAGE,
                                              vision_feature_layer=-1, image_grid_pinpoints=PINPOINTS)
        model = transformers.LlavaNextForConditionalGeneration(config)
        images = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8},
                                                         image_grid_pinpoints=PINPOINTS)
        processor_cls = transformers.LlavaNextProcessor
    tok = _tokenizer(text.vocab_size, {"<image>": LLAVA_IMAGE})
    processor = processor_cls(image_processor=images, tokenizer=tok, patch_size=2,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return _heavier(model), processor


def _qwen(kind):
    model = qwen_tiny.make_model(kind, implementation="sdpa", dtype=torch.float32)
    tok = _tokenizer(64, {"<|image_pad|>": qwen_tiny.IMAGE_ID, "<|video_pad|>": qwen_tiny.VIDEO_ID,
                          "<|vision_start|>": qwen_tiny.VISION_START, "<|vision_end|>": qwen_tiny.VISION_END})
    pixels = qwen_tiny.PATCH * qwen_tiny.MERGE
    images = transformers.Qwen2VLImageProcessorPil(
        patch_size=qwen_tiny.PATCH, merge_size=qwen_tiny.MERGE, temporal_patch_size=qwen_tiny.TEMPORAL,
        size={"shortest_edge": 4 * pixels**2, "longest_edge": 16 * pixels**2})
    base = transformers.Qwen2_5_VLProcessor if kind == "qwen2_5_vl" else transformers.Qwen3VLProcessor
    processor = _images_only(base)(image_processor=images, tokenizer=tok, video_processor=None)
    return model, processor


def _images_only(processor_cls):
    """`processor_cls` that accepts video_processor=None: transformers' video processors
    need torchvision, which does not import beside this torch; the tests send images only."""
    class ImagesOnly(processor_cls):
        @classmethod
        def get_attributes(cls):  # not checked, not saved
            return [name for name in super().get_attributes() if name != "video_processor"]

    ImagesOnly.__name__ = processor_cls.__name__
    return ImagesOnly


def make(kind):
    """(model in train mode, float32, sdpa; its processor) for one of FAMILIES."""
    model, processor = _llava(kind) if kind.startswith("llava") else _qwen(kind)
    return model.train(), processor


def image_token(kind):
    return "<image>" if kind.startswith("llava") else "<|vision_start|><|image_pad|><|vision_end|>"


def dataset(kind, rows=4):
    """A `datasets.Dataset` in TRL's vision prompt-completion format: {"images": [PIL],
    "prompt": "words <image> words", "completion": "words"}, random words and images of a
    few sizes (TRL keeps only these columns of a vision dataset)."""
    import datasets
    import numpy as np
    from PIL import Image

    sizes = {"llava": [(8, 8)], "llava_next": [(10, 20), (20, 10), (16, 16)]}.get(kind, [(8, 8), (8, 16), (16, 8)])
    records = {"images": [], "prompt": [], "completion": []}
    for _ in range(rows):
        h, w = random.choice(sizes)
        pixels = np.random.randint(0, 256, (h, w, 3), dtype=np.uint8)
        before = " ".join(random.choices(WORDS, k=random.randint(1, 4)))
        after = " ".join(random.choices(WORDS, k=random.randint(3, 6)))
        records["images"].append([Image.fromarray(pixels)])
        records["prompt"].append(f"{before} {image_token(kind)} {after}")
        records["completion"].append(" ".join(random.choices(WORDS, k=random.randint(4, 8))))
    return datasets.Dataset.from_dict(records)
