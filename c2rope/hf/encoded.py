"""What each image feature tensor encoded before the forward call stands for.

From 5.24 generate() encodes the images once, then hands the forward the features as
`mm_encoder_outputs`, without the arguments (image_sizes, image_position_ids,
image_grid_thw, ...) that a family reads each image's grid from. A family's patched
get_image_features therefore remembers, for every feature tensor it makes, what that
image's tokens are; the forward recalls it by the tensor's identity. Entries are kept
only while the tensor lives (generate() repeats the same tensors for beams)."""
from __future__ import annotations

import weakref
from typing import Callable, List

from .record import Unpicklable


def pooled_features(mm_encoder_outputs, modality: str):
    """The feature tensor(s) generate() encoded for `modality` ("image", "video") and
    handed the forward in `mm_encoder_outputs` (their pooler_output), or None."""
    return getattr((mm_encoder_outputs or {}).get(modality), "pooler_output", None)


class EncodedFeatures(Unpicklable):
    """Feature tensor -> what the family remembered for it (its grid, its tokens)."""

    def __init__(self):
        self.entries = {}

    def remember(self, features, items) -> None:
        for feature, item in zip(features, items):
            key = id(feature)
            self.entries[key] = (weakref.ref(feature), item)
            weakref.finalize(feature, self.entries.pop, key, None)

    def recall(self, features, unknown: Callable[[int], str]) -> List:
        """The items of `features`, in order; ValueError(unknown(index)) for the first
        tensor this registry did not see made (an id can be reused once a tensor dies:
        the weak reference tells)."""
        items = []
        for index, feature in enumerate(features):
            entry = self.entries.get(id(feature))
            if entry is None or entry[0]() is not feature:
                raise ValueError(unknown(index))
            items.append(entry[1])
        return items

    def __deepcopy__(self, memo):  # a copy starts with no remembered tensors
        clone = type(self)()
        memo[id(self)] = clone
        return clone
