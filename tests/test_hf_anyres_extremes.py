"""Anyres images of extreme aspect ratios (LLaVA-NeXT, LLaVA-OneVision): a very wide
image unpads to a high-resolution part of 0 rows (transformers then appends nothing: the
image is its base view alone), a very tall one to 0 columns (only its rows' newline
tokens remain: an H x 1 grid). The token count c2rope derives must equal the features the
model makes AND the placeholders the processor's own count asks for, for every size."""
import random
import types

import pytest
import torch

from test_hf_common import assert_close_valid, batch_with_images, reference_logits, transformers
from test_hf_llava_next import MAX_TILES, tiny_model

import c2rope
from c2rope.hf.families.llava_next.anyres import AnyresGeometry

TILE = 8  # the tiny models' vision image_size (tiles of 8x8 pixels, patch 2)

# Hand-derived grids (tiny models of test_hf_llava_next: base view 4x4, 1x2 tiles of 4x4
# tokens for these sizes). Wide: the unpadded height rounds to 0 rows, padding 4 // 2 = 2
# cut from both sides of 4 rows. Tall: the width rounds to 0 columns, 8 // 2 = 4 cut from
# both sides of 8 columns; the 4 rows keep their newline.
EXTREME_GRIDS = {
    (3, 1000): ((4, 4),),
    (1, 1000): ((4, 4),),
    (1, 17): ((4, 4),),
    (1000, 3): ((4, 4), (4, 1)),
    (1000, 1): ((4, 4), (4, 1)),
    (17, 1): ((4, 4), (4, 1)),
}
EXTREMES = [(1, 1), (1, 2), (2, 1), (1, 5000), (5000, 1), (4999, 5000), (5000, 4999), (1, 10 ** 6), (10 ** 6, 1)]


def processor_count(kind, model, height, width):
    """The placeholder count transformers' processor asks for (its own _get_number_of_features)."""
    config = model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    image_processor = types.SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints)
    if kind == "next":
        processor = transformers.LlavaNextProcessor.__new__(transformers.LlavaNextProcessor)
        processor.patch_size = config.vision_config.patch_size
        processor.num_additional_image_tokens = 0  # full feature select strategy: no CLS in the base view
        processor.vision_feature_select_strategy = "full"
    else:
        processor = transformers.LlavaOnevisionProcessor.__new__(transformers.LlavaOnevisionProcessor)
        processor.num_image_tokens = side * side
        processor.vision_aspect_ratio = config.vision_aspect_ratio
        processor.vision_feature_select_strategy = "full"
    processor.image_processor = image_processor
    return int(processor._get_number_of_features(height, width, TILE, TILE))


def model_counts(model, sizes):
    """Feature rows the model's own get_image_features makes per image."""
    pixels = torch.randn(len(sizes), MAX_TILES, 3, TILE, TILE)
    with torch.no_grad():
        features = model.model.get_image_features(pixels, torch.tensor(sizes))
    features = getattr(features, "pooler_output", features)
    return [int(f.shape[0]) for f in features]


def random_sizes(count):
    """Sizes over many magnitudes and aspect ratios (log-uniform sides, 1 to 10^4 pixels)."""
    return [(max(1, int(10 ** random.uniform(0, 4))), max(1, int(10 ** random.uniform(0, 4)))) for _ in range(count)]


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_extreme_grids_are_the_hand_derived_ones(kind):
    geometry = AnyresGeometry(tiny_model(kind))
    for (height, width), grids in EXTREME_GRIDS.items():
        assert geometry.image(height, width).grids == grids, (height, width)


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_token_count_equals_model_and_processor_for_any_size(kind):
    model = tiny_model(kind)
    geometry = AnyresGeometry(model)
    sizes = list(EXTREME_GRIDS) + EXTREMES + random_sizes(300)
    derived = [geometry.image(h, w) for h, w in sizes]
    made = model_counts(model, sizes)
    asked = [processor_count(kind, model, h, w) for h, w in sizes]
    for size, item, n_model, n_processor in zip(sizes, derived, made, asked):
        assert item.num_tokens == n_model == n_processor, (size, item.describe(), n_model, n_processor)
        assert all(h >= 1 and w >= 1 for h, w in item.grids), (size, item.describe())
    # the random draw really reaches both degenerate shapes, not only the listed ones
    assert any(len(item.grids) == 1 for item in derived[len(EXTREME_GRIDS) + len(EXTREMES):])
    assert any(item.grids[-1][1] == 1 for item in derived[len(EXTREME_GRIDS) + len(EXTREMES):])


def _prompt(model, sizes):
    """One row per image: text, the image's placeholders, text. Spans from the hand-derived
    table where it has the size, else from the grids c2rope derives (their count checked
    against the model's own above)."""
    geometry = AnyresGeometry(model)
    grids = [EXTREME_GRIDS.get(size) or geometry.image(*size).grids for size in sizes]
    runs = [[(2, 1, sum(h * w for h, w in g))] for g in grids]
    seq = 3 + 2 + max(n for (_, _, n), in runs) + 5  # left padding, text, the longest image, text
    ids, mask, placed = batch_with_images(len(sizes), seq, runs, left_pad=[3 * (i % 2) for i in range(len(sizes))])
    spans = []
    for g, row in zip(grids, placed):
        start = row[0][0]
        spans.append([])
        for h, w in g:
            spans[-1].append((start, h, w))
            start += h * w
    return ids, mask, spans, {"pixel_values": torch.randn(len(sizes), MAX_TILES, 3, TILE, TILE),
                              "image_sizes": torch.tensor(sizes)}


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_extreme_images_match_reference(kind):
    """Wide (base view only), tall (newline column), tiny, huge and random images in one
    batch: patched logits equal the unpatched model fed the reference positions and mask."""
    config = c2rope.C2RoPEConfig()
    model = tiny_model(kind, "eager")
    sizes = [(3, 1000), (1000, 3), (1, 1), (5000, 4999)] + random_sizes(3)
    ids, mask, spans, kwargs = _prompt(model, sizes)
    expected = reference_logits(model, config, ids, mask, spans, **kwargs)
    c2rope.patch_model(model, config)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    assert_close_valid(got, expected, mask)
