"""Synthetic prompts for the diagnostics: text runs and images, nothing tokenised.

A prompt is a sequence of segments, ("text", n) or ("image", H, W); an image takes H*W
consecutive tokens in raster order, as in a LLaVA-style prompt.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import torch

__all__ = ["Prompt"]

Segment = Tuple  # ("text", n) | ("image", h, w)


@dataclasses.dataclass(frozen=True)
class Prompt:
    segments: Tuple[Segment, ...]

    def __post_init__(self):
        for seg in self.segments:
            ok = (len(seg) == 2 and seg[0] == "text" and int(seg[1]) >= 0) or (
                len(seg) == 3 and seg[0] == "image" and int(seg[1]) >= 1 and int(seg[2]) >= 1
            )
            if not ok:
                raise ValueError(f"prompt segments are ('text', n >= 0) or ('image', H >= 1, W >= 1), got {seg!r}")

    @classmethod
    def build(cls, grids: Sequence[Tuple[int, int]], text_before: int = 0, text_between: int = 0,
              text_after: int = 0) -> "Prompt":
        """text_before, image, text_between, image, ..., image, text_after."""
        segments: List[Segment] = [("text", text_before)]
        for i, (h, w) in enumerate(grids):
            if i:
                segments.append(("text", text_between))
            segments.append(("image", int(h), int(w)))
        segments.append(("text", text_after))
        return cls(tuple(s for s in segments if not (s[0] == "text" and s[1] == 0)))

    @property
    def seq_len(self) -> int:
        return sum(s[1] if s[0] == "text" else s[1] * s[2] for s in self.segments)

    @property
    def spans(self) -> List[Tuple[int, int, int]]:
        """(start, H, W) of every image, in order."""
        spans, pos = [], 0
        for seg in self.segments:
            if seg[0] == "image":
                spans.append((pos, seg[1], seg[2]))
                pos += seg[1] * seg[2]
            else:
                pos += seg[1]
        return spans

    @property
    def is_image(self) -> torch.Tensor:
        """bool [S]: True for image tokens."""
        flags = torch.zeros(self.seq_len, dtype=torch.bool)
        for start, h, w in self.spans:
            flags[start : start + h * w] = True
        return flags
