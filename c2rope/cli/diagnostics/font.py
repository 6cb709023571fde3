"""A 3x5 pixel font, so the heat maps can carry their own titles without an imaging
library. Upper-case letters, digits and a little punctuation; lower case is drawn as
upper case, anything else as '?'."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["render_text", "stack_rows", "stack_columns", "fit"]

_GLYPHS = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"), "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"), "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"), "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"), "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"), "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"), "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"), "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."), "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": (".#.", "#.#", "#.#", "##.", ".##"), "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."), "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"), "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"), "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."), "Z": ("###", "..#", ".#.", "#..", "###"),
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("##.", "..#", ".#.", "#..", "###"), "3": ("##.", "..#", ".#.", "..#", "##."),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "##.", "..#", "##."),
    "6": (".##", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "##."),
    " ": ("...", "...", "...", "...", "..."), "-": ("...", "...", "###", "...", "..."),
    ".": ("...", "...", "...", "...", ".#."), ",": ("...", "...", "...", ".#.", "#.."),
    "/": ("..#", "..#", ".#.", "#..", "#.."), "(": (".#.", "#..", "#..", "#..", ".#."),
    ")": (".#.", "..#", "..#", "..#", ".#."), ":": ("...", ".#.", "...", ".#.", "..."),
    "+": ("...", ".#.", "###", ".#.", "..."), "=": ("...", "###", "...", "###", "..."),
    "<": ("..#", ".#.", "#..", ".#.", "..#"), ">": ("#..", ".#.", "..#", ".#.", "#.."),
    "?": ("##.", "..#", ".#.", "...", ".#."),
}
_BITMAPS = {ch: torch.tensor([[c == "#" for c in row] for row in rows]) for ch, rows in _GLYPHS.items()}
WHITE = 255


def render_text(text: str, scale: int = 2, margin: int = 2) -> torch.Tensor:
    """Black text on white, uint8 RGB [5*scale + 2*margin, ..., 3]."""
    cells = []
    for ch in text.upper():
        cells.append(_BITMAPS.get(ch, _BITMAPS["?"]))
        cells.append(torch.zeros(5, 1, dtype=torch.bool))  # one column between glyphs
    ink = torch.cat(cells[:-1], dim=1) if cells else torch.zeros(5, 1, dtype=torch.bool)
    ink = ink.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    ink = torch.nn.functional.pad(ink, (margin, margin, margin, margin))
    gray = torch.where(ink, 0, WHITE).to(torch.uint8)
    return gray.unsqueeze(-1).expand(-1, -1, 3).contiguous()


def _pad(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    out = torch.full((height, width, 3), WHITE, dtype=torch.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def stack_rows(images: Sequence[torch.Tensor], gap: int = 0) -> torch.Tensor:
    """Images one above the other, left-aligned on white."""
    width = max(im.shape[1] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i and gap:
            parts.append(torch.full((gap, width, 3), WHITE, dtype=torch.uint8))
        parts.append(_pad(im, im.shape[0], width))
    return torch.cat(parts, dim=0)


def stack_columns(images: Sequence[torch.Tensor], gap: int = 0) -> torch.Tensor:
    """Images side by side, top-aligned on white."""
    height = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i and gap:
            parts.append(torch.full((height, gap, 3), WHITE, dtype=torch.uint8))
        parts.append(_pad(im, height, im.shape[1]))
    return torch.cat(parts, dim=1)


def fit(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """image cut or padded with white to exactly [height, width, 3] (anchored top left)."""
    return _pad(image[:height, :width], height, width)
