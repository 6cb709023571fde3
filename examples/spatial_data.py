"""A synthetic spatial question-answering task where token positions matter.

Each example is one "image" (an H x W grid of patch feature vectors, H and W even) with
a few distinct objects on it, the question coming first (as in an instruction):

    [BOS] [relation] [FILL]*a [IMG]*(H*W) [FILL]*b [SEP]   -> answer

An object is a fixed random prototype vector plus noise; empty cells are noise. The
asked-about object is marked in the image (a fixed "marker" vector added to its patch,
like a box drawn around it), so finding it is one content lookup and the rest of the
task is spatial. (Naming it by a token, or showing its appearance as a query token,
adds a content-matching hop on which a small model plateaus for longer than a CPU
budget.) Answers are tokens: an object kind, NONE, or a quadrant. The question comes first so that, under the causal mask,
image tokens can already condition on it; with the question after the image, a
2-layer causal model cannot answer "right of" / "below" at all (the target never sees
the cells after it). The relations are "left", "right", "above", "below" (answer: the object in the adjacent
cell, or NONE when that cell is empty or off the grid) and "quadrant" (answer: which
quadrant of the image holds the object). The filler split a + b is random per example
(a + b is fixed, so every sequence has the same length and needs no padding): the
image's start in the sequence and its distance to the question both vary, so a model
cannot memorise absolute sequence offsets.

Why this task: the object's identity is found by content, but every answer depends on
where things sit in 2-D. Under 1-D raster RoPE "above" is "W tokens earlier" and the
left neighbour of a cell in column 0 is the previous row's last cell (the answer must be
NONE), which is exactly what 2-D positions are meant to make easy.

Batches are a pure function of (task, seed, step, rank): a resumed run sees the same
data it would have seen without the interruption, on any number of processes.

This module lives in examples/ (not in the c2rope package) because it is a toy task for
the example and the benchmark, not an API users need.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import torch

RELATIONS = ("left", "right", "above", "below", "quadrant")
# Grid step (d_row, d_col) of each neighbour relation; row 0 is the top of the image.
_OFFSETS = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclasses.dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # int64 [B, S]; image cells hold task.img_id
    features: torch.Tensor  # float32 [B, H*W, feature_dim], raster order
    image_start: torch.Tensor  # int64 [B]: sequence index of the first image token
    answer: torch.Tensor  # int64 [B]: the answer token id
    relation: torch.Tensor  # int64 [B]: index into RELATIONS

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def shard(self, rank: int, world: int) -> "Batch":
        return Batch(*(getattr(self, f.name)[rank::world] for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True)
class SpatialTask:
    """The task's sizes and its token vocabulary.

    grid: (H, W) patch grid, both even (quadrants must be unambiguous).
    num_types: distinct object kinds; objects_per_image: distinct kinds placed per image.
    feature_dim: size of a patch feature; noise: std of the noise added to every patch.
    max_filler: filler tokens split at random before the image and before the question.
    neighbor_prob: for a neighbour question, probability that the asked cell is made to
        hold an object (when it is on the grid), so answers are not mostly NONE.
    prototype_seed: seed of the object prototypes (the "visual world"; keep it fixed).
    """

    grid: Tuple[int, int] = (6, 6)
    num_types: int = 8
    objects_per_image: int = 4
    feature_dim: int = 32
    noise: float = 0.3
    max_filler: int = 3
    neighbor_prob: float = 0.7
    prototype_seed: int = 1234

    def __post_init__(self):
        h, w = self.grid
        if not (isinstance(h, int) and isinstance(w, int)) or h < 2 or w < 2 or h % 2 or w % 2:
            raise ValueError(f"grid must be two even ints >= 2, got {self.grid!r}")
        if not 1 <= self.objects_per_image <= min(self.num_types, h * w):
            raise ValueError(
                f"objects_per_image must be in [1, min(num_types, H*W)], got {self.objects_per_image}"
            )
        if self.feature_dim < 1 or self.noise < 0 or self.max_filler < 0:
            raise ValueError("feature_dim must be >= 1, noise and max_filler >= 0")
        if not 0.0 <= self.neighbor_prob <= 1.0:
            raise ValueError(f"neighbor_prob must be in [0, 1], got {self.neighbor_prob}")

    # ------------------------------------------------------------------ vocabulary
    pad_id = 0
    bos_id = 1
    img_id = 2
    sep_id = 3
    fill_id = 4

    @property
    def relation_ids(self) -> List[int]:
        return [5 + i for i in range(len(RELATIONS))]

    def object_id(self, kind: int) -> int:
        """Answer token naming an object kind."""
        return 5 + len(RELATIONS) + kind

    @property
    def none_id(self) -> int:
        return self.object_id(self.num_types)

    def quadrant_id(self, q: int) -> int:
        return self.none_id + 1 + q

    @property
    def vocab_size(self) -> int:
        return self.quadrant_id(len(QUADRANTS))

    @property
    def seq_len(self) -> int:
        h, w = self.grid
        return 2 + self.max_filler + h * w + 1

    def prototypes(self) -> torch.Tensor:
        """The object kinds' feature vectors, then the marker's: float32
        [num_types + 1, feature_dim], unit scale."""
        g = torch.Generator().manual_seed(self.prototype_seed)
        return torch.randn(self.num_types + 1, self.feature_dim, generator=g)

    # ------------------------------------------------------------------ sampling

    def answer_for(self, cells: Dict[Tuple[int, int], int], target: Tuple[int, int], relation: str) -> int:
        """The answer token of a question about the object at `target` (cells maps
        (row, col) -> kind)."""
        h, w = self.grid
        row, col = target
        if relation == "quadrant":
            return self.quadrant_id(2 * int(row >= h // 2) + int(col >= w // 2))
        d_row, d_col = _OFFSETS[relation]
        kind = cells.get((row + d_row, col + d_col))
        return self.none_id if kind is None else self.object_id(kind)

    def sample(self, n: int, seed: int) -> Batch:
        """n examples, a pure function of (self, n, seed)."""
        g = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
        h, w = self.grid
        cells_total = h * w
        protos = self.prototypes()
        features = torch.randn(n, cells_total, self.feature_dim, generator=g) * self.noise
        marker = protos[self.num_types]
        input_ids = torch.full((n, self.seq_len), self.fill_id, dtype=torch.int64)
        image_start = torch.empty(n, dtype=torch.int64)
        answer = torch.empty(n, dtype=torch.int64)
        relation = torch.empty(n, dtype=torch.int64)

        def randint(high: int) -> int:
            return int(torch.randint(high, (1,), generator=g))

        for i in range(n):
            kinds = torch.randperm(self.num_types, generator=g)[: self.objects_per_image].tolist()
            where = torch.randperm(cells_total, generator=g)[: self.objects_per_image].tolist()
            cells = {divmod(c, w): k for c, k in zip(where, kinds)}
            target = divmod(where[0], w)
            rel = randint(len(RELATIONS))
            name = RELATIONS[rel]
            if name != "quadrant" and len(cells) > 1 and float(torch.rand(1, generator=g)) < self.neighbor_prob:
                d_row, d_col = _OFFSETS[name]
                cell = (target[0] + d_row, target[1] + d_col)
                if 0 <= cell[0] < h and 0 <= cell[1] < w and cell not in cells:
                    moved = divmod(where[1], w)  # move another object next to the target
                    cells[cell] = cells.pop(moved)
            for (row, col), kind in cells.items():
                features[i, row * w + col] += protos[kind]
            features[i, target[0] * w + target[1]] += marker
            start = 2 + randint(self.max_filler + 1)
            input_ids[i, 0] = self.bos_id
            input_ids[i, 1] = self.relation_ids[rel]
            input_ids[i, start : start + cells_total] = self.img_id
            input_ids[i, -1] = self.sep_id
            image_start[i] = start
            answer[i] = self.answer_for(cells, target, name)
            relation[i] = rel
        return Batch(input_ids, features, image_start, answer, relation)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the training batch of one (step, rank): independent streams per pair."""
    return (seed * 1_000_003 + step) * 1_009 + rank


__all__ = ["Batch", "QUADRANTS", "RELATIONS", "SpatialTask", "step_seed"]
