"""C2RoPEConfig: every option of docs/design.md §3-5, validated at construction."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

SPATIAL_LAYOUTS = ("interleaved", "blocked")
COORDS = ("centered", "merged")
TEXT_SPATIAL = ("temporal", "zero")
TEMPORAL = ("raster", "concentric", "shared")
MASKS = ("outward", "inward", "causal")
SPATIAL_BANDS = ("low", "high", "spread")

# Axis indices of a triplet position (m, x, y).
AXIS_M, AXIS_X, AXIS_Y = 0, 1, 2

# The paper's released code spends 12 of 128 rotary dims on (x, y) (116 + 12).
_PAPER_SPATIAL_FRACTION = 12 / 128
_DEFAULT_SPATIAL_FRACTION = 1 / 4


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _round_down_to_4(value: float) -> int:
    return int(value) // 4 * 4


def _default_spatial(dim: int, fraction: float) -> int:
    """d_spatial when neither split is given (docs/design.md §4): dim * fraction rounded
    down to a multiple of 4, but at least 4, so that small heads (and the paper's 12/128
    below 43 dims) keep one (x, y) pair instead of silently becoming plain RoPE; 0 for
    dim 2 and 4, which have no room for m's 2 dims beside a pair."""
    if dim < 4 + 2:
        return 0
    return max(4, _round_down_to_4(dim * fraction))


@dataclasses.dataclass(frozen=True)
class C2RoPEConfig:
    """How C2RoPE builds positions, splits frequencies and masks images.

    d_temporal / d_spatial: rotary dims given to m and to (x, y). None derives them from
        the rotary dim at use time (see `split`): d_spatial = d * spatial_fraction rounded
        down to a multiple of 4 (128 -> 96 + 32 by default), at least 4 (one (x, y) pair)
        for d >= 6, and 0 for d = 2 or 4.
    spatial_layout: "interleaved" (x on even, y on odd spatial slots) or "blocked".
    coords: "centered" (half-integer centred coordinates) or "merged" (truncated).
    text_spatial: "temporal" (text is (m, m, m): no image == plain RoPE) or "zero".
    temporal: "raster" (image tokens keep their sequence index), "concentric" (one m per
        ring) or "shared" (one m per image; see c2rope.positions for the exact rule).
    mask: "outward", "inward" or "causal" inside each image.
    spatial_fraction: share of the rotary dim used for (x, y) when d_spatial is None.
    spatial_band: which frequency slots (x, y) take: "low" (the slowest, after m),
        "high" (the fastest, before m) or "spread" (one (x, y) pair in the middle of each
        of d_spatial/4 equal stretches of the spectrum, m everywhere else).
    """

    d_temporal: Optional[int] = None
    d_spatial: Optional[int] = None
    spatial_layout: str = "interleaved"
    coords: str = "centered"
    text_spatial: str = "temporal"
    temporal: str = "raster"
    mask: str = "outward"
    spatial_fraction: float = _DEFAULT_SPATIAL_FRACTION
    spatial_band: str = "low"

    def __post_init__(self):
        _check_choice("spatial_layout", self.spatial_layout, SPATIAL_LAYOUTS)
        _check_choice("coords", self.coords, COORDS)
        _check_choice("text_spatial", self.text_spatial, TEXT_SPATIAL)
        _check_choice("temporal", self.temporal, TEMPORAL)
        _check_choice("mask", self.mask, MASKS)
        _check_choice("spatial_band", self.spatial_band, SPATIAL_BANDS)
        for name in ("d_temporal", "d_spatial"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an int or None, got {value!r}")
        if not (0.0 < float(self.spatial_fraction) < 1.0):
            raise ValueError(f"spatial_fraction must be in (0, 1), got {self.spatial_fraction!r}")
        if self.d_temporal is not None and self.d_spatial is not None:
            self.split(self.d_temporal + self.d_spatial)

    @classmethod
    def paper_code(cls, **overrides) -> "C2RoPEConfig":
        """The choices of the paper's released code: merged coordinates, concentric
        temporal index, inward mask, blocked 116 + 12 split (scaled for other dims)."""
        fields = dict(
            spatial_layout="blocked",
            coords="merged",
            temporal="concentric",
            mask="inward",
            spatial_fraction=_PAPER_SPATIAL_FRACTION,
        )
        fields.update(overrides)
        return cls(**fields)

    def split(self, dim: int) -> Tuple[int, int]:
        """(d_temporal, d_spatial) for a rotary dim, validated (docs/design.md §4)."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2:
            raise ValueError(f"rotary dim must be a positive even int, got {dim!r}")
        d_t, d_s = self.d_temporal, self.d_spatial
        if d_s is None and d_t is None:
            d_s = _default_spatial(dim, self.spatial_fraction)
            d_t = dim - d_s
        elif d_s is None:
            d_s = dim - d_t
        elif d_t is None:
            d_t = dim - d_s
        if d_t + d_s != dim:
            raise ValueError(
                f"d_temporal + d_spatial must equal the rotary dim {dim}, got {d_t} + {d_s}"
            )
        if d_s < 0 or d_s % 4:
            raise ValueError(f"d_spatial must be a non-negative multiple of 4, got {d_s}")
        if d_t < 2 or d_t % 2:
            raise ValueError(f"d_temporal must be an even int >= 2, got {d_t}")
        return d_t, d_s

    def axis_table(self, dim: int) -> list:
        """Per frequency slot (dim // 2 of them, slot 0 the fastest), which position axis
        it rotates by. `spatial_band` picks the d_spatial/2 slots of x and y (see
        `spatial_slots`); m takes every other slot. Along the spatial slots, in slot
        order, x and y alternate ("interleaved") or x takes the first half ("blocked")."""
        _, d_s = self.split(dim)
        n_spatial = d_s // 2
        if self.spatial_layout == "interleaved":
            spatial = [AXIS_X if i % 2 == 0 else AXIS_Y for i in range(n_spatial)]
        else:
            spatial = [AXIS_X] * (n_spatial // 2) + [AXIS_Y] * (n_spatial // 2)
        table = [AXIS_M] * (dim // 2)
        for slot, axis in zip(self.spatial_slots(dim), spatial):
            table[slot] = axis
        return table

    def spatial_slots(self, dim: int) -> list:
        """The frequency slots given to (x, y), ascending: the last d_spatial/2 ("low"),
        the first ("high"), or ("spread") pairs of adjacent slots c-1, c with
        c = floor((j + 1/2) * G), G = (dim/2) / (d_spatial/4), j = 0 ... d_spatial/4 - 1:
        each pair sits mid-way in one of d_spatial/4 equal stretches of the spectrum,
        so x and y of a pair differ by one slot and both see every frequency band."""
        _, d_s = self.split(dim)
        n_slots, n_spatial = dim // 2, d_s // 2
        if self.spatial_band == "low":
            return list(range(n_slots - n_spatial, n_slots))
        if self.spatial_band == "high":
            return list(range(n_spatial))
        n_pairs = n_spatial // 2
        # Integer form of floor((j + 1/2) * n_slots / n_pairs); d_temporal >= 2 makes the
        # stretches longer than 2 slots, so pairs never overlap.
        centres = [((2 * j + 1) * n_slots) // (2 * n_pairs) for j in range(n_pairs)]
        return [slot for c in centres for slot in (c - 1, c)]

    @classmethod
    def seed_code(cls, **overrides) -> "C2RoPEConfig":
        """The seed's original choices: raster m and (x, y) on the slowest slots. Under
        these, vertical neighbours are W apart on the fastest slots and (x, y) hardly
        turn across an image: the column break of 1-D RoPE stays (docs/continuity.md)."""
        fields = dict(temporal="raster", spatial_band="low")
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def recommended(cls, **overrides) -> "C2RoPEConfig":
        """One shared m per image (temporal="shared") with (x, y) spread over the whole
        spectrum (spatial_band="spread"), outward Chebyshev mask: the configuration that
        passes the continuity validation of docs/continuity.md (vertical/horizontal
        neighbour attention 1.03 at dim 128 on 24x24, rings still centre-outward), which
        seed_code() fails (0.014). Text without images is still exactly RoPE. Not the
        default: in the toy training study (head dim 16) it learned slower than
        seed_code(); see docs/continuity.md, "The choice"."""
        fields = dict(temporal="shared", spatial_band="spread")
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_name(cls, name: str) -> "C2RoPEConfig":
        """A configuration by short name, as the command line and the studies spell it:
        "default", "seed" (seed_code), "paper" (paper_code), "recommended" or "<temporal>-<band>"
        (e.g. "shared-high"), optionally followed by "-<mask>" ("shared-high-causal");
        a mask alone ("causal") is the default configuration with that mask."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        presets = {"default": cls, "seed": cls.seed_code, "paper": cls.paper_code,
                   "recommended": cls.recommended}
        parts = name.split("-")
        overrides = {}
        if len(parts) == 1 and parts[0] in MASKS:  # "causal": the default with that mask
            return cls(mask=parts[0])
        if len(parts) > 1 and parts[-1] in MASKS:
            overrides["mask"] = parts.pop()
        if len(parts) == 1 and parts[0] in presets:
            return presets[parts[0]](**overrides)
        if len(parts) == 2 and parts[0] in TEMPORAL and parts[1] in SPATIAL_BANDS:
            return cls(temporal=parts[0], spatial_band=parts[1], **overrides)
        raise ValueError(
            f"name must be one of {tuple(presets)} or '<temporal>-<band>' with temporal in {TEMPORAL} "
            f"and band in {SPATIAL_BANDS}, optionally followed by '-<mask>' with mask in {MASKS}; "
            f"got {name!r}"
        )

    @property
    def mask_mode(self) -> int:
        """The kernel's mode code (csrc/include/c2rope.h, c2rope_mask_mode)."""
        return MASKS.index(self.mask)
