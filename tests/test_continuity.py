"""The spatial-continuity options: spatial_band (which frequency slots x and y take),
temporal="shared" (one m per image), the named presets, and the promise that text
without images stays exactly the model's RoPE under every combination."""
import itertools

import pytest
import torch

import c2rope
from c2rope import C2RoPEConfig, VisualLayout, build_position_ids, chebyshev_mask
from c2rope.config import AXIS_M, AXIS_X, AXIS_Y, MASKS, SPATIAL_BANDS, TEMPORAL
from c2rope.reference import chebyshev_mask_ref, cos_sin_ref, position_ids_ref
from layouts import random_layout  # noqa: E402

COMBINATIONS = [
    C2RoPEConfig(temporal=t, spatial_band=b, spatial_layout=sl, coords=c, mask=m)
    for t, b, sl, c, m in itertools.product(TEMPORAL, SPATIAL_BANDS, ("interleaved", "blocked"),
                                            ("centered", "merged"), MASKS)
]


def _name(c):
    return f"{c.temporal}-{c.spatial_band}-{c.spatial_layout}-{c.coords}-{c.mask}"


# ------------------------------------------------------------------ axis tables


@pytest.mark.parametrize("dim", [8, 16, 24, 64, 128, 136])
@pytest.mark.parametrize("fraction", [0.25, 12 / 128, 0.5])
@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
def test_every_band_keeps_the_split_and_the_xy_order(dim, fraction, layout):
    tables = {}
    for band in SPATIAL_BANDS:
        cfg = C2RoPEConfig(spatial_band=band, spatial_fraction=fraction, spatial_layout=layout)
        d_t, d_s = cfg.split(dim)
        table = cfg.axis_table(dim)
        slots = cfg.spatial_slots(dim)
        assert len(table) == dim // 2 and table.count(AXIS_M) == d_t // 2
        assert table.count(AXIS_X) == table.count(AXIS_Y) == d_s // 4
        assert slots == sorted(set(slots)) and [k for k, a in enumerate(table) if a != AXIS_M] == slots
        # Along the spatial slots, x/y follow the layout whatever the band.
        tables[band] = [table[k] for k in slots]
    assert tables["low"] == tables["high"] == tables["spread"]


def test_bands_by_hand():
    m, x, y = AXIS_M, AXIS_X, AXIS_Y
    low, high, spread = (C2RoPEConfig(spatial_band=b).axis_table(16) for b in SPATIAL_BANDS)
    assert low == [m] * 6 + [x, y]
    assert high == [x, y] + [m] * 6
    assert spread == [m, m, m, x, y, m, m, m]  # one pair, mid-spectrum
    for band in SPATIAL_BANDS:  # no spatial slots at all: every band is plain RoPE
        assert C2RoPEConfig(d_temporal=16, d_spatial=0, spatial_band=band).axis_table(16) == [m] * 8
    # 128: 8 pairs, one in the middle of each stretch of 8 slots
    assert C2RoPEConfig(spatial_band="spread").spatial_slots(128) == [
        s for c in range(4, 64, 8) for s in (c - 1, c)]
    # the paper's 116 + 12 blocked split, spread: 3 pairs, x in the first half of the slots
    paper = C2RoPEConfig.paper_code(spatial_band="spread")
    assert paper.spatial_slots(128) == [9, 10, 31, 32, 52, 53]
    assert [paper.axis_table(128)[k] for k in paper.spatial_slots(128)] == [x, x, x, y, y, y]


def test_spread_pairs_cover_the_spectrum_evenly():
    cfg = C2RoPEConfig(spatial_band="spread")
    slots = cfg.spatial_slots(128)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    # x and y of a pair are neighbouring frequencies: their ratio is one slot's step
    step = float(inv_freq[0] / inv_freq[1])
    for k in range(0, len(slots), 2):
        assert slots[k + 1] == slots[k] + 1
        assert float(inv_freq[slots[k]] / inv_freq[slots[k + 1]]) == pytest.approx(step)


# ------------------------------------------------------------------ options and presets


def test_bad_values_raise_naming_the_option():
    with pytest.raises(ValueError, match="spatial_band"):
        C2RoPEConfig(spatial_band="middle")
    with pytest.raises(ValueError, match="spatial_band"):
        C2RoPEConfig(spatial_band=None)
    with pytest.raises(ValueError, match="temporal"):
        C2RoPEConfig(temporal="single")
    with pytest.raises(ValueError, match="name"):
        C2RoPEConfig.from_name("shared-middle")
    with pytest.raises(ValueError, match="name"):
        C2RoPEConfig.from_name("shared")
    with pytest.raises(TypeError, match="name"):
        C2RoPEConfig.from_name(3)


def test_named_presets():
    seed = C2RoPEConfig.seed_code()
    assert (seed.temporal, seed.spatial_band, seed.mask, seed.coords) == ("raster", "low", "outward", "centered")
    assert C2RoPEConfig.from_name("seed") == seed
    assert C2RoPEConfig() == seed  # the default was not changed (docs/continuity.md, "The choice")
    assert C2RoPEConfig.from_name("paper") == C2RoPEConfig.paper_code()
    assert C2RoPEConfig.from_name("default") == C2RoPEConfig()
    rec = C2RoPEConfig.recommended()
    assert (rec.temporal, rec.spatial_band, rec.mask, rec.text_spatial) == ("shared", "spread", "outward", "temporal")
    assert C2RoPEConfig.from_name("recommended-causal") == C2RoPEConfig.recommended(mask="causal")
    assert C2RoPEConfig.from_name("causal") == C2RoPEConfig(mask="causal")
    assert C2RoPEConfig.from_name("seed-causal") == C2RoPEConfig.seed_code(mask="causal")
    assert C2RoPEConfig.from_name("shared-spread-inward") == C2RoPEConfig(
        temporal="shared", spatial_band="spread", mask="inward")
    # paper_code keeps its own choices; text_spatial stays "temporal" (released code)
    paper = C2RoPEConfig.paper_code()
    assert (paper.temporal, paper.spatial_band, paper.text_spatial) == ("concentric", "low", "temporal")


# ------------------------------------------------------------------ text only == RoPE


def _hf_rotary(head_dim):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=64)
    return transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("config", COMBINATIONS, ids=_name)
def test_text_only_is_exactly_the_models_rope(config):
    # Left-padded text-only batch through build_position_ids and C2RotaryEmbedding:
    # bit-identical cos/sin to the model's own rotary module on every valid token.
    hf = _hf_rotary(32)
    rope = c2rope.C2RotaryEmbedding.from_hf(hf, config)
    mask = torch.tensor([[0, 0, 0] + [1] * 40, [1] * 43])
    layout = VisualLayout.from_spans([[], []], 43, attention_mask=mask)
    triplets = build_position_ids(layout, config)
    hf_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    x = torch.randn(2, 43, 64, dtype=torch.bfloat16)
    ours, theirs = rope(x, triplets), hf(x, hf_ids)
    valid = mask.bool()
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and torch.equal(a[valid], b[valid])
    # and after an image, decoding text (m, m, m) is again plain RoPE at that m
    spans = [[(2, 3, 4)], [(0, 5, 5)]]
    layout = VisualLayout.from_spans(spans, 43).append_text(3)
    tail = build_position_ids(layout, config)[:, -3:]
    m = tail[..., 0]
    assert torch.equal(tail, m.unsqueeze(-1).expand(2, 3, 3))
    got = rope(x[:, :3], tail)
    want = hf(x[:, :3], m.long())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------ kernels and mask


@pytest.mark.parametrize("band", SPATIAL_BANDS)
@pytest.mark.parametrize("temporal", TEMPORAL)
def test_cos_sin_of_images_match_the_float64_reference(band, temporal):
    config = C2RoPEConfig(temporal=temporal, spatial_band=band)
    layout = random_layout(max_side=7, min_tail=0)
    pos = build_position_ids(layout, config)
    torch.testing.assert_close(pos, position_ids_ref(layout.spans, layout.valid, config), rtol=0, atol=0)
    rope = c2rope.C2RotaryEmbedding(dim=24, config=config)
    cos, sin = rope(torch.zeros(1, dtype=torch.float64), pos)
    want_cos, want_sin = cos_sin_ref(pos, rope.inv_freq, config.axis_table(24), dtype=torch.float64)
    torch.testing.assert_close(cos, want_cos, atol=1e-12, rtol=0)
    torch.testing.assert_close(sin, want_sin, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mask", MASKS)
def test_mask_does_not_depend_on_the_new_options(mask):
    layout = random_layout(max_side=6)
    want = chebyshev_mask_ref(layout.valid, layout.image_id, layout.ring, mode=mask, dtype=torch.bool)
    for temporal, band in itertools.product(TEMPORAL, SPATIAL_BANDS):
        got = chebyshev_mask(layout, C2RoPEConfig(temporal=temporal, spatial_band=band, mask=mask))
        assert torch.equal(got, want)


# ------------------------------------------------------------------ the validation test


def test_recommended_restores_continuity_and_keeps_centre_outward_rings():
    # The validation the method asks for (docs/continuity.md): vertical and horizontal
    # neighbours get comparable attention (ratio in [0.8, 1.25]) on a 24x24 image at
    # dim 128, while the Chebyshev mask still lets a ring see only itself and inner rings.
    from c2rope.cli.diagnostics.attention import default_inv_freq, qk_weights
    from c2rope.cli.diagnostics.measures import Probe, continuity, image_attention, ring_causality
    from c2rope.cli.diagnostics.schemes import c2rope_scheme

    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    probe = Probe(default_inv_freq(128), qk_weights(8, 128, generator))
    grid = (24, 24)
    measured = {}
    for name in ("recommended", "seed"):
        _, start, attn, allowed = image_attention(probe, c2rope_scheme(name), grid, 8, 8)
        measured[name] = continuity(attn, allowed, start, grid), ring_causality(attn, allowed, start, grid)
    cont, rings = measured["recommended"]
    assert 0.8 <= cont["ratio"] <= 1.25
    assert cont["locality"] > 1  # neighbours still get more than an average patch
    assert rings["farther"] == 0 and torch.equal(rings["may"], torch.tril(torch.ones_like(rings["may"])))
    # seed_code() keeps 1-D RoPE's column break: the patch above is 24 raster steps away
    assert measured["seed"][0]["ratio"] < 0.1


@pytest.mark.parametrize("coords", ("centered", "merged"))
def test_shared_positions_compile_fullgraph(coords):
    config = C2RoPEConfig(temporal="shared", coords=coords)
    layout = random_layout(max_side=6, min_tail=0)
    compiled = torch.compile(lambda lay: build_position_ids(lay, config), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(layout), build_position_ids(layout, config))
    nxt = torch.compile(lambda lay: c2rope.next_temporal_index(lay, config), fullgraph=True, backend="aot_eager")
    assert torch.equal(nxt(layout), c2rope.next_temporal_index(layout, config))
