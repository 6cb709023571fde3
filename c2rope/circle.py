"""Circle-RoPE positions (docs/design.md §6) and the per-layer AGE choice.

Circle-RoPE keeps Qwen2/2.5-VL's three-axis M-RoPE (t, h, w) but moves each image's
tokens onto a circle lying in the plane perpendicular to the text direction (1, 1, 1).
Every image token is then equally far from every text token on the text line, so the
rotary attention of a text token does not favour some patches over others because of
where they happen to sit in the raster order.

`circle_position_ids` gives the positions of one image before the text offset is
added (like the `llm_pos_ids` of Qwen's `get_rope_index`); c2rope.mrope builds whole
sequences and c2rope.hf.qwen2_vl patches the models.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Tuple, Union

import torch

AGE_STRATEGIES = ("all", "first_half", "second_half", "alternate")

# The circle's plane is perpendicular to the text direction n = (1, 1, 1)/sqrt(3), with
# in-plane basis u = (-n_y, n_x, 0)/|.| and v = n x u (the paper code's choice). The
# rotation maps the plane's (a, b, c) to a*u + b*v + c*n, in (x, y, z) = (w, h, t) order.
_N = (1 / math.sqrt(3.0),) * 3
_U = (-1 / math.sqrt(2.0), 1 / math.sqrt(2.0), 0.0)
_V = (-1 / math.sqrt(6.0), -1 / math.sqrt(6.0), 2 / math.sqrt(6.0))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def parse_radius(radius) -> Tuple[str, float]:
    """("fixed", R) for a positive number, ("auto", s) for "auto" (s = 1) or "auto-s".

    Raises ValueError naming `radius` for anything else."""
    if _is_real(radius):
        value = float(radius)
        if math.isfinite(value) and value > 0:
            return "fixed", value
        raise ValueError(f"radius must be a positive finite number, 'auto' or 'auto-<scale>', got {radius!r}")
    if isinstance(radius, str):
        if radius == "auto":
            return "auto", 1.0
        if radius.startswith("auto-"):
            try:
                scale = float(radius[len("auto-"):])
            except ValueError:
                scale = float("nan")
            if math.isfinite(scale) and scale > 0:
                return "auto", scale
    raise ValueError(
        f"radius must be a positive finite number, 'auto' or 'auto-<scale>' with a positive "
        f"scale (e.g. 'auto-1.5'), got {radius!r}"
    )


def _check_alpha(alpha) -> float:
    if not _is_real(alpha) or not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


@dataclasses.dataclass(frozen=True)
class CircleRoPEConfig:
    """Options of Circle-RoPE and of AGE, its per-layer alternation with M-RoPE.

    alpha: weight of the coordinate angle (atan2 of the centred grid) against the raster
        index angle, in [0, 1]; 1 keeps the image's geometry, 0 spreads tokens evenly.
    radius: circle radius: a positive number, "auto" (the largest |coordinate| of the
        grid) or "auto-s" (s times it, e.g. "auto-1.5").
    move_to_origin: centre the grid on the origin before mapping. False keeps the raw
        indices: the angles and an "auto" radius then come from uncentred coordinates
        (the circle itself stays centred on the text line).
    age_strategy: which decoder layers use Circle-RoPE positions; the others use plain
        M-RoPE. "all", "first_half" (layers < n // 2), "second_half" (layers >= n // 2)
        or "alternate" (even layers, so layer 0 is Circle).
    """

    alpha: float = 0.5
    radius: Union[float, str] = 10.0
    move_to_origin: bool = True
    age_strategy: str = "all"

    def __post_init__(self):
        _check_alpha(self.alpha)
        parse_radius(self.radius)
        _check_bool("move_to_origin", self.move_to_origin)
        if self.age_strategy not in AGE_STRATEGIES:
            raise ValueError(f"age_strategy must be one of {AGE_STRATEGIES}, got {self.age_strategy!r}")

    def uses_circle(self, layer_idx: int, num_layers: int) -> bool:
        """Whether decoder layer `layer_idx` of `num_layers` takes Circle-RoPE positions."""
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if not isinstance(layer_idx, int) or isinstance(layer_idx, bool) or not 0 <= layer_idx < num_layers:
            raise ValueError(f"layer_idx must be an int in [0, {num_layers}), got {layer_idx!r}")
        if self.age_strategy == "all":
            return True
        if self.age_strategy == "first_half":
            return layer_idx < num_layers // 2
        if self.age_strategy == "second_half":
            return layer_idx >= num_layers // 2
        return layer_idx % 2 == 0

    def layer_plan(self, num_layers: int) -> Tuple[bool, ...]:
        """uses_circle for every layer, in order (True = Circle-RoPE, False = M-RoPE)."""
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        return tuple(self.uses_circle(i, num_layers) for i in range(num_layers))

    def position_ids(self, grid, *, time_interval=1.0, device=None) -> torch.Tensor:
        """circle_position_ids for this config's alpha, radius and move_to_origin."""
        return circle_position_ids(
            grid, self.alpha, self.radius, self.move_to_origin, time_interval=time_interval, device=device
        )


def _check_grid(grid) -> Tuple[int, int, int]:
    if isinstance(grid, torch.Tensor):
        if grid.dtype.is_floating_point or grid.dtype.is_complex or grid.numel() != 3:
            raise ValueError(f"grid must be three positive ints (t, h, w), got {grid!r}")
        grid = grid.tolist()
    if not isinstance(grid, (tuple, list)) or len(grid) != 3:
        raise ValueError(f"grid must be three positive ints (t, h, w), got {grid!r}")
    for value in grid:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"grid must be three positive ints (t, h, w), got {grid!r}")
    return int(grid[0]), int(grid[1]), int(grid[2])


def temporal_indices(t: int, time_interval=1.0, device=None) -> torch.Tensor:
    """Qwen's temporal index of each of t frames: (arange(t) * time_interval).long().

    The same expression as transformers' get_vision_position_ids, so a float32 tensor
    interval truncates exactly as it does there."""
    if isinstance(time_interval, torch.Tensor):
        if time_interval.numel() != 1 or not bool(torch.isfinite(time_interval).all()) or time_interval.item() < 0:
            raise ValueError(f"time_interval must be a finite number >= 0, got {time_interval!r}")
        time_interval = time_interval.reshape(()).to(device)
    elif not _is_real(time_interval) or not math.isfinite(float(time_interval)) or time_interval < 0:
        raise ValueError(f"time_interval must be a finite number >= 0, got {time_interval!r}")
    return (torch.arange(t, device=device) * time_interval).long()


def circle_points(t_index: torch.Tensor, h: int, w: int, alpha: float, radius, move_to_origin: bool) -> torch.Tensor:
    """Circle-RoPE positions of a (len(t_index), h, w) grid whose frames sit at the given
    temporal indices: float64 [3, T*h*w], rows (t, h, w). Arguments are not validated."""
    kind, value = parse_radius(radius)
    device = t_index.device
    f64 = dict(dtype=torch.float64, device=device)
    t_coord = t_index.to(torch.float64)
    h_coord = torch.arange(h, **f64)
    w_coord = torch.arange(w, **f64)
    if move_to_origin:
        # Centre each axis: subtract (max + min) / 2, as the paper code does.
        t_coord = t_coord - (t_coord.max() + t_coord.min()) / 2
        h_coord = h_coord - (h - 1) / 2
        w_coord = w_coord - (w - 1) / 2
    if kind == "auto":
        extent = torch.cat([t_coord.abs(), h_coord.abs(), w_coord.abs()]).max()
        r = extent * value
    else:
        r = torch.tensor(value, **f64)

    # Angles within one frame (all frames share the same h, w grid).
    y, x = torch.meshgrid(h_coord, w_coord, indexing="ij")
    theta_coord = torch.atan2(y, x).flatten()
    spread = theta_coord.max() - theta_coord.min()
    if spread > 0:
        # Rescale linearly so the smallest angle goes to 0 and the largest to 2*pi.
        theta_coord = (theta_coord - theta_coord.min()) / spread * (2 * math.pi)
    theta_index = torch.arange(h * w, **f64) / (h * w) * (2 * math.pi)
    theta = alpha * theta_coord + (1 - alpha) * theta_index

    a = (r * torch.cos(theta)).repeat(t_coord.numel())
    b = (r * torch.sin(theta)).repeat(t_coord.numel())
    c = t_coord.repeat_interleave(h * w)
    # In the paper code the temporal component is dropped by the rotation; it is zero for
    # a centred single image either way. Keeping it along n stacks the frames of a video
    # along the text direction, each frame on its own copy of the circle.
    x_new = a * _U[0] + b * _V[0] + c * _N[0]
    y_new = a * _U[1] + b * _V[1] + c * _N[1]
    z_new = a * _U[2] + b * _V[2] + c * _N[2]
    return torch.stack([z_new, y_new, x_new])


def circle_position_ids(grid, alpha=0.5, radius=10.0, move_to_origin=True, *, time_interval=1.0, device=None):
    """Circle-RoPE positions of one image (or video) grid, before the text offset.

    grid: (t, h, w) of the LLM grid (after spatial merging), three positive ints.
    alpha, radius, move_to_origin: see CircleRoPEConfig.
    time_interval: temporal index step between frames (Qwen2.5-VL videos:
        tokens_per_second * second_per_grid_t); irrelevant for images (t = 1).
    Returns float32 [3, t*h*w] in rows (t, h, w), tokens in raster order (frame, row,
    column), like the `llm_pos_ids` of Qwen's get_rope_index. Computed in float64 and
    rounded once.
    """
    t, h, w = _check_grid(grid)
    alpha = _check_alpha(alpha)
    parse_radius(radius)
    _check_bool("move_to_origin", move_to_origin)
    t_index = temporal_indices(t, time_interval, device=device)
    return circle_points(t_index, h, w, alpha, radius, move_to_origin).to(torch.float32)


__all__ = ["AGE_STRATEGIES", "CircleRoPEConfig", "circle_position_ids", "parse_radius"]
