"""Tiny random Gemma 3 models and prompts for the Gemma tests (no weights downloaded).

The text stack has sliding-window layers (window 6, rope base 10,000) and global
layers (rope base 1,000,000, linear scaling 2 as on gemma-3-4b-it's global layers),
heads of 16 dims. Images are 16x16 pixels, 8x8 SigLIP patches pooled to 4x4 = 16
tokens (mm_tokens_per_image), each between a begin-of-image and an end-of-image token,
as Gemma's processor writes them."""
import torch
import transformers

VOCAB = 96
IMG, BOI, EOI = 95, 93, 94
SIDE = 4  # pooled tokens per image side
WINDOW = 6
LAYER_TYPES = ("sliding_attention", "sliding_attention", "full_attention", "sliding_attention")


def gemma3_config(**text_overrides):
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=16, patch_size=2)
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=len(LAYER_TYPES),
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
                layer_types=list(LAYER_TYPES), max_position_embeddings=512,
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                    "rope_theta": 1000000.0}})
    text.update(text_overrides)
    return transformers.Gemma3Config(vision_config=transformers.SiglipVisionConfig(**vision.to_dict()),
                                     text_config=transformers.Gemma3TextConfig(**text),
                                     mm_tokens_per_image=SIDE * SIDE, image_token_id=IMG, boi_token_id=BOI,
                                     eoi_token_id=EOI)


def make_gemma3(implementation="sdpa", dtype=torch.float64):
    model = transformers.Gemma3ForConditionalGeneration(gemma3_config()).to(dtype).eval()
    model.set_attn_implementation(implementation)
    return model


def _batch_rows(rows, spans, left_pad):
    """Rows of ids (each starting with its `left_pad` zeros) as one left-padded batch:
    (input_ids, attention_mask, spans moved by each row's extra padding)."""
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    out_spans = []
    for b, (ids, pad) in enumerate(zip(rows, left_pad)):
        shift = length - len(ids)  # extra left padding so rows end together
        input_ids[b, shift:] = torch.tensor(ids)
        mask[b, shift + pad:] = 1
        out_spans.append([(start + shift, h, w) for start, h, w in spans[b]])
    return input_ids, mask, out_spans


def gemma3_prompt(images_per_row=(2, 1), left_pad=(0, 5), dtype=torch.float64, seed_text=None):
    """(inputs for forward/generate, spans): rows of random text with images
    `<boi> 16 x <img> <eoi>` at random places, left padding per row."""
    rows, spans = [], []
    for count, pad in zip(images_per_row, left_pad):
        ids = [0] * pad + torch.randint(1, 90, (int(torch.randint(1, 4, ())),)).tolist()
        row_spans = []
        for _ in range(count):
            ids.append(BOI)
            row_spans.append((len(ids), SIDE, SIDE))
            ids += [IMG] * (SIDE * SIDE)
            ids.append(EOI)
            ids += torch.randint(1, 90, (int(torch.randint(1, 5, ())),)).tolist()
        rows.append(ids)
        spans.append(row_spans)
    input_ids, mask, out_spans = _batch_rows(rows, spans, left_pad)
    images = sum(images_per_row)
    inputs = {"input_ids": input_ids, "attention_mask": mask,
              "pixel_values": torch.randn(images, 3, 16, 16, dtype=dtype),
              "token_type_ids": (input_ids == IMG).long()}
    return inputs, out_spans


def text_prompt(rows=2, length=24, left_pad=(4, 0)):
    ids = torch.randint(1, 90, (rows, length))
    mask = torch.ones_like(ids)
    for b, pad in enumerate(left_pad[:rows]):
        ids[b, :pad] = 0
        mask[b, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------- Gemma 4
KERNEL = 2  # pooling kernel: k x k patches per token
PATCH = 2
MAX_TOKENS = 16  # soft tokens per image at most (the processor's max_soft_tokens)
VIDEO = 92
GEMMA4_LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention", "full_attention")


def gemma4_config(kv_shared_layers=0):
    """Sliding layers: head_dim 16, base 10,000. Global layers: head_dim 32 with rope
    "proportional", partial_rotary_factor 0.25 (as Gemma 4 publishes): 4 of 16
    frequencies rotate, the rest are zero. Per-layer inputs; the last
    `kv_shared_layers` layers reuse the keys and values of the last earlier layer of
    their type (as the small Gemma 4 checkpoints do); image blocks bidirectional on
    sliding layers (use_bidirectional_attention "vision")."""
    text = transformers.Gemma4TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=len(GEMMA4_LAYER_TYPES),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32, sliding_window=WINDOW,
        layer_types=list(GEMMA4_LAYER_TYPES), vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8,
        use_bidirectional_attention="vision", max_position_embeddings=512, num_kv_shared_layers=kv_shared_layers)
    vision = transformers.Gemma4VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                             patch_size=PATCH, pooling_kernel_size=KERNEL, position_embedding_size=64)
    return transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=None, image_token_id=IMG,
                                     boi_token_id=BOI, eoi_token_id=EOI, video_token_id=VIDEO, audio_token_id=91,
                                     boa_token_id=90, eoa_token_index=89)


def make_gemma4(implementation="sdpa", dtype=torch.float64, kv_shared_layers=0):
    model = transformers.Gemma4ForConditionalGeneration(gemma4_config(kv_shared_layers)).to(dtype).eval()
    model.set_attn_implementation(implementation)
    return model


def gemma4_image(rows, cols, dtype=torch.float64):
    """(patches [MAX_TOKENS * k^2, 3 * p^2], positions [..., 2]) of one image of
    rows x cols tokens, padded as the processor pads (-1 positions)."""
    ph, pw = rows * KERNEL, cols * KERNEL
    positions = torch.stack(torch.meshgrid(torch.arange(pw), torch.arange(ph), indexing="xy"), dim=-1).reshape(-1, 2)
    patches = torch.rand(ph * pw, 3 * PATCH * PATCH, dtype=dtype)
    pad = MAX_TOKENS * KERNEL * KERNEL - ph * pw
    return (torch.cat([patches, torch.zeros(pad, patches.shape[1], dtype=dtype)]),
            torch.cat([positions, torch.full((pad, 2), -1)]))


def gemma4_prompt(images_per_row=(2, 1), left_pad=(0, 5), dtype=torch.float64):
    """Rows with images of random (often non-square) grids, `<boi> tokens <eoi>`."""
    rows, spans, pixels, positions = [], [], [], []
    for count, pad in zip(images_per_row, left_pad):
        ids = [0] * pad + torch.randint(1, 89, (int(torch.randint(1, 4, ())),)).tolist()
        row_spans = []
        for _ in range(count):
            h, w = (int(v) for v in torch.randint(1, 5, (2,)))
            patches, where = gemma4_image(h, w, dtype)
            pixels.append(patches)
            positions.append(where)
            ids.append(BOI)
            row_spans.append((len(ids), h, w))
            ids += [IMG] * (h * w)
            ids.append(EOI)
            ids += torch.randint(1, 89, (int(torch.randint(1, 5, ())),)).tolist()
        rows.append(ids)
        spans.append(row_spans)
    input_ids, mask, out_spans = _batch_rows(rows, spans, left_pad)
    inputs = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": torch.stack(pixels),
              "image_position_ids": torch.stack(positions), "mm_token_type_ids": (input_ids == IMG).long()}
    return inputs, out_spans
