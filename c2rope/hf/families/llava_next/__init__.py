"""Patcher for transformers' LLaVA-NeXT and LLaVA-OneVision (`LlavaNextForConditionalGeneration`,
`LlavaOnevisionForConditionalGeneration`, and their bare `...Model`s), 4.57 and 5.x.

The decoder is patched as for plain LLaVA (families/llama.py, patch_decoder). What differs is where
the images are: an anyres image is not one grid of `image_token_id`s but a base view and
an unpadded high-resolution grid with newline tokens (anyres.py), whose sizes depend on
the call's `image_sizes`. So the inner model's entry hook (entry.py; every path that
runs the decoder passes there, with input_ids and image_sizes) derives the grids of
every image of the call and hands them to the plan as the chunk's spans
(`CallFrame.chunk_spans`); decoding steps then find them on the KV cache as usual. An
explicit `visual_layout=` wins.
"""
from __future__ import annotations

from typing import Optional

import torch

from .anyres import AnyresGeometry, Spans, merge_rows, placeholder_spans
from ...encoded import EncodedFeatures, pooled_features
from ...introspect import parameter_names
from ..llama import patch_decoder
from ...pipeline import to_kwargs
from ...record import Unpicklable
from ...state import default_image_token_id, refuse_grid
from ...registry import register_patcher

MODEL_TYPES = ("llava_next", "llava_onevision")
CHECK_CLASSES = {"llava_next": "LlavaNextForConditionalGeneration",
                 "llava_onevision": "LlavaOnevisionForConditionalGeneration"}
DOCS = "docs/anyres.md"


def call_spans(geometry: AnyresGeometry, image_token_id: int, video_token_id: Optional[int], arguments: dict):
    """Grid spans of the images (and OneVision videos) in this call's input_ids, relative
    to its first token; None when it holds none."""
    ids = arguments.get("input_ids")
    if ids is None:
        if arguments.get("pixel_values") is not None or arguments.get("pixel_values_videos") is not None:
            raise ValueError("c2rope: anyres images given with inputs_embeds: c2rope finds them in input_ids; "
                             "pass input_ids, or the layout as visual_layout=c2rope.VisualLayout.from_spans(...)")
        return None
    images = videos = None
    if bool((ids == image_token_id).any()):
        sizes = arguments.get("image_sizes")
        if sizes is not None:
            items = geometry.images(sizes, arguments.get("batch_num_images"))
        else:
            items = _encoded_images(arguments.get("mm_encoder_outputs"))
        images = placeholder_spans(ids, image_token_id, items, "image")
    if video_token_id is not None and bool((ids == video_token_id).any()):
        pixels = arguments.get("pixel_values_videos")
        if isinstance(pixels, torch.Tensor) and pixels.dim() == 5:
            items = video_items(geometry, pixels)
        else:
            items = _encoded_videos(arguments.get("mm_encoder_outputs"))
        videos = placeholder_spans(ids, video_token_id, items, "video")
    spans: Optional[Spans] = merge_rows(images, videos)
    return spans


# Image features computed before the forward call (5.24+ generate() encodes the images
# once, then passes `mm_encoder_outputs` without image_sizes): the tokens of every
# feature tensor, recorded when get_image_features made it.
_ENCODED = EncodedFeatures()


def _encoded_images(mm_encoder_outputs):
    features = pooled_features(mm_encoder_outputs, "image")
    if features is None:
        raise ValueError("c2rope: input_ids hold image tokens but no image_sizes were given; the anyres grids "
                         "of an image follow from its size (or pass visual_layout=)")
    return _ENCODED.recall(features, lambda index: f"c2rope: image {index} of mm_encoder_outputs was not encoded "
                           "by this patched model's get_image_features, so its anyres grids are unknown; pass "
                           "image_sizes (or visual_layout=)")


def video_items(geometry, pixel_values_videos: torch.Tensor) -> list:
    """One pooled grid item per video of pixel_values_videos [videos, frames, C, H, W]."""
    return [geometry.video(int(pixel_values_videos.shape[1]))] * int(pixel_values_videos.shape[0])


# Video features computed before the forward call (5.24+ generate() encodes the videos
# once too, then passes `mm_encoder_outputs["video"]` without pixel_values_videos): one
# feature tensor [videos, tokens, hidden] per get_video_features call, recorded with the
# items of its videos.
_ENCODED_VIDEOS = EncodedFeatures()


def _encoded_videos(mm_encoder_outputs):
    features = pooled_features(mm_encoder_outputs, "video")
    if features is None:
        raise ValueError("c2rope: input_ids hold video tokens but no pixel_values_videos [videos, frames, C, H, W] "
                         "were given (or pass visual_layout=)")
    return _ENCODED_VIDEOS.recall([features], lambda index: "c2rope: the video features of mm_encoder_outputs "
                                  "were not encoded by this patched model's get_video_features, so their frame count "
                                  "is unknown; pass pixel_values_videos (or visual_layout=)")[0]


def encode_videos(original, geometry, names, *args, **kwargs):
    """The model's get_video_features, recording the items of the videos it encodes."""
    pixels = to_kwargs(names, args, kwargs).get("pixel_values_videos")
    out = original(*args, **kwargs)
    features = getattr(out, "pooler_output", out)
    if isinstance(pixels, torch.Tensor) and pixels.dim() == 5 and isinstance(features, torch.Tensor):
        _ENCODED_VIDEOS.remember([features], [video_items(geometry, pixels)])
    return out


def encode_images(original, geometry, names, *args, **kwargs):
    """The model's get_image_features, recording the tokens of every image it encodes."""
    arguments = to_kwargs(names, args, kwargs)
    items = geometry.images(arguments.get("image_sizes"), arguments.get("batch_num_images"))
    out = original(*args, **kwargs)
    features = getattr(out, "pooler_output", out)
    if isinstance(features, (list, tuple)) and len(features) == len(items):
        _ENCODED.remember(features, items)
    return out


class AnyresSpans(Unpicklable):
    """The entry hook's `spans(names, args, kwargs)` for anyres models (an object, not a
    closure, so deep copies of a patched model copy it)."""

    def __init__(self, geometry, image_token_id, video_token_id):
        self.geometry = geometry
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id

    def __call__(self, names, args, kwargs):
        return call_spans(self.geometry, self.image_token_id, self.video_token_id, to_kwargs(names, args, kwargs))


@register_patcher(*MODEL_TYPES)
def _patch_anyres(model, record, state):
    config = model.config
    refuse_grid(state, config.model_type, "every image's grids from its image_sizes")
    default_image_token_id(state, config)
    geometry = AnyresGeometry(model)
    state.grid = (geometry.side, geometry.side)  # a lone image token in a decoding step: the base view
    video_token_id = getattr(config, "video_token_id", None) if geometry.onevision else None
    encoder = model.model if callable(getattr(getattr(model, "model", None), "get_image_features", None)) else model
    record.wrap_forward(encoder, encode_images, geometry, parameter_names(encoder.get_image_features),
                        attribute="get_image_features")
    if video_token_id is not None and callable(getattr(encoder, "get_video_features", None)):
        record.wrap_forward(encoder, encode_videos, geometry, parameter_names(encoder.get_video_features),
                            attribute="get_video_features")
    patch_decoder(model, record, state, inner_spans=AnyresSpans(geometry, state.image_token_id, video_token_id))


def check_inputs(model, generator: torch.Generator):
    """`python -m c2rope check`: a prompt with one image shaped like the smallest grid
    pinpoint with 30% of its height cut (so the high-res part is unpadded), the
    text-only prompt, the rows to compare and the report's line on the image."""
    from ....cli.check_parts import SEQ_TEXT, config_image_token_id, image_prompt, surrounding_text

    before, after = surrounding_text(generator)
    geometry = AnyresGeometry(model)
    height, width = min(geometry.pinpoints, key=lambda p: p[0] * p[1])
    height = max(1, round(height * 0.7))
    rows, cols = geometry.tile_grid(height, width)
    tiles = 1 + rows * cols  # the base view, then the tiles
    vision = model.config.vision_config
    pixels = torch.randn(1, tiles, getattr(vision, "num_channels", 3), geometry.tile, geometry.tile,
                         generator=generator)
    image = geometry.image(height, width)
    with_image, text, compared = image_prompt(before, after, image.num_tokens, config_image_token_id(model.config),
                                              {"pixel_values": pixels, "image_sizes": torch.tensor([[height, width]])})
    what = (f"synthetic image: {height}x{width} px (image_sizes), {tiles} tiles of {vision.image_size} px -> "
            f"{image.num_tokens} image tokens ({image.describe()}), between {SEQ_TEXT} + {SEQ_TEXT} text tokens")
    return with_image, text, compared, what
