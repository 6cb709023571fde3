"""matplotlib for the command line's pictures, and nothing else of c2rope.

matplotlib is an optional extra (`c2rope[plots]`): it is imported here on first use, so
the library core and `python -m c2rope info` never need it, and a missing install fails
with an error that names the extra instead of a bare ModuleNotFoundError. Figures are
built as `matplotlib.figure.Figure` objects and written through the Agg canvas: no
pyplot, no global backend switch, no display needed, nothing left open.
"""
from __future__ import annotations

import os
from typing import Tuple

__all__ = ["MissingPlotsExtra", "require_matplotlib", "new_figure", "pixel_axes", "save"]

INSTALL_HINT = "pip install 'c2rope[plots]'  (or: pip install matplotlib)"


class MissingPlotsExtra(ImportError):
    """matplotlib, needed for the pictures, is not installed."""


def require_matplotlib(command: str = "c2rope"):
    """The matplotlib module, or MissingPlotsExtra naming the extra to install."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401  (also fails on a broken install)
    except ImportError as exc:
        raise MissingPlotsExtra(
            f"{command} draws its pictures with matplotlib, which cannot be imported here ({exc}). "
            f"Install the plots extra: {INSTALL_HINT}"
        ) from exc
    return matplotlib


def new_figure(width_px: int, height_px: int, dpi: int = 100, layout: str | None = "constrained"):
    """A Figure of the given size in pixels (at `dpi`), not attached to pyplot."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout=layout)


def pixel_axes(fig, left: int, bottom: int, width: int, height: int):
    """Axes placed at exact pixel coordinates (origin bottom left), so an image drawn
    with one cell per screen pixel is written without resampling (no aliasing)."""
    fig_w, fig_h = fig.get_size_inches() * fig.dpi
    return fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))


def save(fig, path: str | os.PathLike) -> str:
    """Write `fig` as PNG at its own dpi; returns the path as a string."""
    fig.savefig(path, dpi=fig.dpi, format="png")
    return os.fspath(path)


def figure_size_px(fig) -> Tuple[int, int]:
    """(width, height) in pixels of what save() writes."""
    width, height = fig.get_size_inches() * fig.dpi
    return round(width), round(height)
