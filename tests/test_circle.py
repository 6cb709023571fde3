"""Circle-RoPE positions (c2rope.circle) against a per-token transcription of docs/design.md
section 6, geometric properties, AGE layer plans and argument validation."""
import math
import random

import pytest
import torch

import c2rope
from c2rope.circle import AGE_STRATEGIES, CircleRoPEConfig, circle_position_ids, parse_radius


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(v):
    norm = math.sqrt(sum(c * c for c in v))
    return tuple(c / norm for c in v)


def reference_circle(t, h, w, alpha, radius, move_to_origin, time_interval=1.0):
    """docs/design.md §6, one token at a time with the math module."""
    tokens = [(int(f * time_interval), r, c) for f in range(t) for r in range(h) for c in range(w)]
    xs = [float(c) for _, _, c in tokens]
    ys = [float(r) for _, r, _ in tokens]
    zs = [float(z) for z, _, _ in tokens]
    if move_to_origin:
        xs = [x - (max(xs) + min(xs)) / 2 for x in xs]
        ys = [y - (max(ys) + min(ys)) / 2 for y in ys]
        zs = [z - (max(zs) + min(zs)) / 2 for z in zs]
    if isinstance(radius, str):
        scale = 1.0 if radius == "auto" else float(radius.split("-", 1)[1])
        radius = scale * max(abs(v) for v in xs + ys + zs)
    n = _unit((1.0, 1.0, 1.0))
    u = _unit((-n[1], n[0], 0.0))
    v = _cross(n, u)
    frame = h * w
    angles = [math.atan2(ys[k], xs[k]) for k in range(frame)]
    lo, hi = min(angles), max(angles)
    out = []
    for k in range(len(tokens)):
        theta_coord = angles[k % frame]
        if hi > lo:
            theta_coord = (theta_coord - lo) / (hi - lo) * 2 * math.pi
        theta_index = 2 * math.pi * (k % frame) / frame
        theta = alpha * theta_coord + (1 - alpha) * theta_index
        a, b, c = radius * math.cos(theta), radius * math.sin(theta), zs[k]
        p = [a * u[i] + b * v[i] + c * n[i] for i in range(3)]
        out.append((p[2], p[1], p[0]))  # rows (t, h, w) = (z, y, x)
    return torch.tensor(out, dtype=torch.float64).T


def _random_radius():
    return random.choice([random.uniform(0.5, 20.0), "auto", f"auto-{random.uniform(0.5, 3.0):.3f}"])


@pytest.mark.parametrize("trial", range(6))
def test_matches_reference_on_random_grids(trial):
    t = 1 if trial < 4 else random.randint(2, 3)
    h, w = random.randint(1, 7), random.randint(1, 7)
    alpha = random.choice([0.0, 1.0, random.random()])
    radius = _random_radius()
    move = trial % 2 == 0 or t > 1
    interval = 1.0 if t == 1 else random.choice([1.0, 2.0, 0.5])
    got = circle_position_ids((t, h, w), alpha, radius, move, time_interval=interval)
    assert got.dtype == torch.float32 and got.shape == (3, t * h * w)
    want = reference_circle(t, h, w, alpha, radius, move, interval)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=2e-5)


def test_defaults_are_the_spec_defaults():
    got = circle_position_ids((1, 4, 5))
    torch.testing.assert_close(got.double(), reference_circle(1, 4, 5, 0.5, 10.0, True), rtol=1e-6, atol=2e-5)
    cfg = CircleRoPEConfig()
    assert (cfg.alpha, cfg.radius, cfg.move_to_origin, cfg.age_strategy) == (0.5, 10.0, True, "all")
    assert torch.equal(cfg.position_ids((1, 4, 5)), got)
    assert c2rope.circle_position_ids is circle_position_ids and c2rope.CircleRoPEConfig is CircleRoPEConfig


def test_first_token_lands_on_u_axis():
    # alpha = 0: token 0 has angle 0, i.e. the point R * u = R * (-1, 1, 0) / sqrt(2) in
    # (x, y, z) = (w, h, t), which the rows (t, h, w) list as (0, R/sqrt2, -R/sqrt2).
    radius = random.uniform(1.0, 10.0)
    got = circle_position_ids((1, 3, 4), alpha=0.0, radius=radius)
    s = radius / math.sqrt(2.0)
    torch.testing.assert_close(got[:, 0], torch.tensor([0.0, s, -s]), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("radius", [7.5, "auto", "auto-1.5"])
def test_points_on_circle_perpendicular_to_text_direction(radius):
    h, w = random.randint(2, 9), random.randint(2, 9)
    got = circle_position_ids((1, h, w), alpha=random.random(), radius=radius).double()
    extent = max(h - 1, w - 1) / 2
    expected_r = {7.5: 7.5, "auto": extent, "auto-1.5": 1.5 * extent}[radius]
    # Centred on the origin, in the plane x + y + z = 0, at distance R from the centre.
    torch.testing.assert_close(got.sum(0), torch.zeros(h * w, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=0), torch.full((h * w,), expected_r, dtype=torch.float64),
                               rtol=1e-6, atol=1e-5)


def test_alpha_zero_spreads_tokens_evenly():
    h, w = random.randint(2, 6), random.randint(2, 6)
    got = circle_position_ids((1, h, w), alpha=0.0, radius=5.0).double()
    chord = (got[:, 1:] - got[:, :-1]).norm(dim=0)
    torch.testing.assert_close(chord, torch.full_like(chord, 2 * 5.0 * math.sin(math.pi / (h * w))),
                               rtol=1e-5, atol=1e-5)


def test_video_frames_are_copies_shifted_along_text_direction():
    t, h, w = 3, random.randint(1, 5), random.randint(1, 5)
    got = circle_position_ids((t, h, w), radius=4.0, time_interval=2.0).double().reshape(3, t, h * w)
    # Temporal indices 0, 2, 4 centred to -2, 0, 2: frame f is frame 0 + 2 f (1, 1, 1) / sqrt(3).
    for f in range(1, t):
        shift = torch.full((3, h * w), 2.0 * f / math.sqrt(3.0), dtype=torch.float64)
        torch.testing.assert_close(got[:, f] - got[:, 0], shift, rtol=0, atol=1e-5)


def test_without_move_to_origin_uses_raw_indices():
    got = circle_position_ids((1, 3, 3), radius=2.0, move_to_origin=False).double()
    # The angles come from atan2 of the raw (row, col), but the circle stays centred on
    # the origin; an "auto" radius sees the raw (larger) extent.
    torch.testing.assert_close(got.norm(dim=0), torch.full((9,), 2.0, dtype=torch.float64), rtol=1e-6, atol=1e-5)
    auto = circle_position_ids((1, 3, 3), radius="auto", move_to_origin=False).double()
    torch.testing.assert_close(auto.norm(dim=0), torch.full((9,), 2.0, dtype=torch.float64), rtol=1e-6, atol=1e-5)
    centred = circle_position_ids((1, 3, 3), radius="auto").double()
    torch.testing.assert_close(centred.norm(dim=0), torch.ones(9, dtype=torch.float64), rtol=1e-6, atol=1e-5)


def test_single_token_grid():
    assert torch.allclose(circle_position_ids((1, 1, 1), radius="auto"), torch.zeros(3, 1))
    got = circle_position_ids((1, 1, 1), radius=3.0).double()
    assert abs(float(got.norm()) - 3.0) < 1e-5


def test_tensor_grid_and_device(device):
    grid = torch.tensor([1, 3, 4])
    got = circle_position_ids(grid, device=device)
    assert got.device.type == device.type
    assert torch.equal(got.cpu(), circle_position_ids((1, 3, 4)))


@pytest.mark.parametrize("grid", [(1, 2), (0, 2, 2), (1, -1, 2), (1, 2.0, 2), (1, True, 2), "123",
                                  torch.tensor([1.0, 2.0, 2.0]), torch.tensor([1, 2])])
def test_bad_grid(grid):
    with pytest.raises(ValueError, match="grid"):
        circle_position_ids(grid)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        circle_position_ids((1, 2, 2), alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        CircleRoPEConfig(alpha=alpha)


@pytest.mark.parametrize("radius", [0.0, -1.0, float("inf"), float("nan"), "auto-", "auto-0", "auto--1",
                                    "auto-x", "auto1.5", "automatic", None, True])
def test_bad_radius(radius):
    with pytest.raises(ValueError, match="radius"):
        circle_position_ids((1, 2, 2), radius=radius)
    with pytest.raises(ValueError, match="radius"):
        CircleRoPEConfig(radius=radius)


def test_parse_radius():
    assert parse_radius(3) == ("fixed", 3.0)
    assert parse_radius("auto") == ("auto", 1.0)
    assert parse_radius("auto-1.5") == ("auto", 1.5)


def test_bad_move_to_origin_and_time_interval():
    with pytest.raises(ValueError, match="move_to_origin"):
        circle_position_ids((1, 2, 2), move_to_origin=1)
    with pytest.raises(ValueError, match="move_to_origin"):
        CircleRoPEConfig(move_to_origin="yes")
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="time_interval"):
            circle_position_ids((2, 2, 2), time_interval=bad)


def test_age_strategies():
    n = random.choice([4, 6, 7, 9])
    half = n // 2
    plans = {s: CircleRoPEConfig(age_strategy=s).layer_plan(n) for s in AGE_STRATEGIES}
    assert plans["all"] == (True,) * n
    assert plans["first_half"] == tuple(i < half for i in range(n))
    assert plans["second_half"] == tuple(i >= half for i in range(n))
    assert plans["alternate"] == tuple(i % 2 == 0 for i in range(n))
    assert plans["alternate"][0] is True
    # first_half and second_half are complements.
    assert all(a != b for a, b in zip(plans["first_half"], plans["second_half"]))
    cfg = CircleRoPEConfig(age_strategy="alternate")
    assert [cfg.uses_circle(i, n) for i in range(n)] == list(plans["alternate"])


def test_bad_age_arguments():
    with pytest.raises(ValueError, match="age_strategy"):
        CircleRoPEConfig(age_strategy="strategy_2")
    cfg = CircleRoPEConfig()
    for bad in (-1, 4, 1.0, True):
        with pytest.raises(ValueError, match="layer_idx"):
            cfg.uses_circle(bad, 4)
    for bad in (0, -2, 2.0):
        with pytest.raises(ValueError, match="num_layers"):
            cfg.layer_plan(bad)


def test_config_is_frozen():
    cfg = CircleRoPEConfig()
    with pytest.raises(Exception):
        cfg.alpha = 0.2  # type: ignore[misc]
