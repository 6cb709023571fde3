"""Per-model state of a patch and the per-call plan: which image spans the sequence
holds (from input_ids, an explicit `visual_layout=`, a recorded LLaVA splice, or the
KV cache of earlier steps) and the triplet positions of the current chunk.

Nothing here builds masks (`masks.py`) or touches the model (`pipeline.py`).
"""
from __future__ import annotations

import copy
import dataclasses
import weakref
from typing import Any, List, Optional, Tuple

import torch

from ..config import C2RoPEConfig
from .context import ThreadMemory
from .introspect import past_length

Spans = Tuple[Tuple[Tuple[int, int, int], ...], ...]

# Attention implementations that take an arbitrary mask: eager/sdpa a dense
# [B, 1, Q, K] mask, flex_attention a BlockMask.
MASKABLE_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")
_CACHE_ATTR = "_c2rope_spans"


def config_image_token_id(config) -> Optional[int]:
    """The config's image placeholder id (image_token_id, else image_token_index: older
    LLaVA-family configs)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def default_image_token_id(state, config) -> None:
    """A patcher's default: the config's image placeholder id where the caller gave none."""
    if state.image_token_id is None:
        state.image_token_id = config_image_token_id(config)


def refuse_grid(state, family: str, derives: str) -> None:
    """ValueError when the caller passed grid= to a family whose grids follow from its
    config or its inputs (`derives` says from what)."""
    if state.grid is not None:
        raise ValueError(f"c2rope: {family} derives {derives}; grid= is not taken (pass visual_layout= to a forward "
                         "call to override)")


@dataclasses.dataclass
class CallPlan:
    spans: Spans  # image spans of the whole sequence (cache + this chunk), absolute
    total_len: int  # past + q
    positions: Optional[torch.Tensor] = None  # float32 [B, q, 3]; None = text only
    layout: Any = None  # VisualLayout of the whole sequence when it holds images
    samples: Optional[torch.Tensor] = None  # int64 [B, total]: sample of each token in packed rows

    @property
    def has_images(self) -> bool:
        return self.positions is not None


def _repeat_rows(spans, batch: int, what: str):
    """Rows of a prompt-time record for generate()'s expanded batch (beams, samples):
    generate repeats every row `batch // rows` times in place (repeat_interleave)."""
    rows = len(spans)
    if rows == batch:
        return tuple(spans)
    if rows == 0 or batch % rows:
        raise ValueError(f"c2rope: {what} has {rows} rows but the input has batch {batch}")
    return tuple(row for row in spans for _ in range(batch // rows))


class C2RoPEState:
    """What a patched model remembers between calls (one per patched model). Per-call
    data lives in thread-local frames (`context.py`), not here."""

    def __init__(self, config: C2RoPEConfig, image_token_id: Optional[int], grid, family: str):
        self.config = config
        self.image_token_id = image_token_id
        self.grid = grid
        self.family = family
        self._local = ThreadMemory()

    def __deepcopy__(self, memo):
        return C2RoPEState(copy.deepcopy(self.config, memo), self.image_token_id, copy.deepcopy(self.grid, memo),
                           self.family)

    # ------------------------------------------------------------ thread-local memory

    def _memory(self) -> dict:
        memory = getattr(self._local, "memory", None)
        if memory is None:
            memory = self._local.memory = {"splices": [], "tuple_cache": None}
        return memory

    def record_splice(self, embeds: torch.Tensor, spans: Spans) -> None:
        """Legacy LLaVA: image features were spliced into `embeds` at `spans`. Kept only
        as long as `embeds` lives, and consumed by the decoder call that receives
        those embeddings (or generate()'s row-repeated copy of them)."""
        splices = self._memory()["splices"]
        splices[:] = [(ref, s) for ref, s in splices if ref() is not None]
        splices.append((weakref.ref(embeds), spans))

    def _take_splice(self, embeds: Optional[torch.Tensor]) -> Optional[Spans]:
        if embeds is None:
            return None
        splices = self._memory()["splices"]
        for i in range(len(splices) - 1, -1, -1):
            recorded, spans = splices[i][0](), splices[i][1]
            if recorded is None:
                del splices[i]
                continue
            if recorded is embeds:
                del splices[i]
                return spans
            rows = recorded.shape[0]
            if (recorded.shape[1:] == embeds.shape[1:] and rows and embeds.shape[0] % rows == 0
                    and embeds.device == recorded.device
                    and torch.equal(recorded.repeat_interleave(embeds.shape[0] // rows, dim=0), embeds)):
                # generate() expanded the spliced embeddings for beams / several samples.
                del splices[i]
                return _repeat_rows(spans, embeds.shape[0], "the recorded image splice")
        return None

    def _remember(self, cache, spans: Spans, total_len: int) -> None:
        if cache is None:
            return
        if isinstance(cache, (tuple, list)):
            # Legacy tuple caches cannot carry an attribute: remember them by their first
            # key tensor, which the next decoding step passes back in (weakly: no cache
            # is kept alive by c2rope).
            if len(cache) and cache[0] is not None:
                self._memory()["tuple_cache"] = (weakref.ref(cache[0][0]), spans, total_len)
            return
        try:
            setattr(cache, _CACHE_ATTR, (spans, total_len))
        except (AttributeError, TypeError):  # slotted / frozen cache classes
            pass

    def _recall(self, cache):
        if cache is None:
            return None
        if isinstance(cache, (tuple, list)):
            entry = self._memory()["tuple_cache"]
            if entry is not None and len(cache) and cache[0] is not None and entry[0]() is cache[0][0]:
                return entry[1], entry[2]
            return None
        return getattr(cache, _CACHE_ATTR, None)

    # ------------------------------------------------------------ spans

    def _layout_spans(self, layout, batch: int, past: int, total_len: int) -> Spans:
        """Absolute spans from an explicit VisualLayout of the sequence from token 0."""
        from ..layout import VisualLayout

        if not isinstance(layout, VisualLayout):
            raise TypeError(f"visual_layout must be a c2rope.VisualLayout, got {type(layout).__name__}")
        spans = _repeat_rows(layout.spans, batch, "visual_layout")
        for row in spans:
            for start, h, w in row:
                if start < total_len < start + h * w:
                    raise ValueError(
                        f"visual_layout: the image at {start} ({h}x{w}) is cut by the end of the input "
                        f"({total_len} tokens with the cache)"
                    )
        return tuple(tuple(s for s in row if s[0] + s[1] * s[2] <= total_len) for row in spans)

    def _chunk_spans(self, input_ids, attention_mask, batch: int, q_len: int) -> Optional[Spans]:
        """Image spans found in the current chunk's ids (relative to its first token)."""
        from ..layout import VisualLayout

        if input_ids is None or self.image_token_id is None:
            return None
        if input_ids.dim() != 2 or tuple(input_ids.shape) != (batch, q_len):
            return None
        if not bool((input_ids == self.image_token_id).any()):
            return tuple(() for _ in range(batch))
        mask = attention_mask[:, -q_len:] if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 \
            else None
        return VisualLayout.from_input_ids(input_ids, self.image_token_id, self.grid, attention_mask=mask).spans

    def _cached_spans(self, cache, past: int, batch: int) -> List[list]:
        if past == 0:
            return [[] for _ in range(batch)]
        record = self._recall(cache)
        if record is None:
            return [[] for _ in range(batch)]
        spans = record[0]
        if len(spans) != batch:
            # beam search reorders rows but never changes their number after prefill
            return [[] for _ in range(batch)]
        # A cropped cache (assisted decoding) keeps only the images it still holds whole.
        return [[s for s in row if s[0] + s[1] * s[2] <= past] for row in spans]

    # ------------------------------------------------------------ plan

    def plan(self, *, frame, input_ids, embeds, attention_mask, cache, batch: int, q_len: int,
             device: torch.device, position_ids=None, cu_seq_lens=None, cu_seq_lens_k=None) -> CallPlan:
        """Spans and positions for one decoder call (positions None when no image)."""
        past = past_length(cache)
        total = past + q_len
        layout_arg = frame.visual_layout if frame is not None else None
        if layout_arg is not None:
            spans = self._layout_spans(layout_arg, batch, past, total)
        else:
            chunk = self._take_splice(embeds)
            if chunk is None and frame is not None:
                chunk = frame.chunk_spans
            if chunk is None:
                ids = input_ids if input_ids is not None else (frame.input_ids if frame is not None else None)
                chunk = self._chunk_spans(ids, attention_mask, batch, q_len)
            rows = self._cached_spans(cache, past, batch)
            if chunk is not None:
                for row, new in zip(rows, chunk):
                    row.extend((start + past, h, w) for start, h, w in new)
            spans = tuple(tuple(row) for row in rows)
        plan = CallPlan(spans=spans, total_len=total)
        if not any(spans):
            if cu_seq_lens is not None or cu_seq_lens_k is not None:
                # text-only rows stay transformers', but bad boundaries are refused all the same
                from . import packing

                packing.sample_ids(position_ids, cu_seq_lens, attention_mask, batch, q_len, device, cu_seq_lens_k)
            return plan
        if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
            raise ValueError(
                "c2rope: with images in the sequence the patched model needs the 2-D padding "
                "attention_mask [batch, past + new tokens] (or None), not a prepared 4-D mask; "
                "static/compileable caches in generate() prepare 4-D masks and are not supported"
            )
        from ..positions import build_position_ids
        from . import packing

        plan.layout = self._layout(spans, total, attention_mask, device)
        samples = packing.sample_ids(position_ids, cu_seq_lens, attention_mask, batch, q_len, device, cu_seq_lens_k)
        if samples is not None:
            if past:
                raise ValueError("c2rope: packed rows (position_ids restarting inside a row) cannot be combined "
                                 "with a KV cache")
            packing.check_spans_inside_samples(spans, samples)
            plan.samples = samples
            plan.positions = packing.packed_positions(plan.layout, samples, self.config)
            return plan
        plan.positions = build_position_ids(plan.layout, self.config)[:, past:]
        return plan

    def finish(self, cache, plan: CallPlan) -> None:
        """After a decoder call: let the cache remember the spans for the next step."""
        self._remember(cache, plan.spans, plan.total_len)

    @staticmethod
    def _layout(spans: Spans, total_len: int, attention_mask, device):
        from ..layout import VisualLayout

        mask = None
        if attention_mask is not None:
            if attention_mask.shape[1] < total_len:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} tokens but the cache plus the "
                    f"input hold {total_len}"
                )
            mask = attention_mask[:, :total_len].to(device)
        return VisualLayout.from_spans([list(r) for r in spans], total_len, attention_mask=mask, device=device)

    def needs_mask(self, plan: CallPlan, implementation: Optional[str] = None) -> bool:
        """Whether c2rope hands the decoder its own mask: with images, for every mask
        mode but "causal"; and for packed rows with images in "causal" mode too, on the
        implementations that take a mask (transformers' eager / sdpa masks do not
        separate packed samples; FlashAttention separates them itself)."""
        if not plan.has_images:
            return False
        if self.config.mask != "causal":
            return True
        return plan.samples is not None and implementation in MASKABLE_IMPLEMENTATIONS

    def check_implementation(self, implementation: str) -> None:
        if implementation not in MASKABLE_IMPLEMENTATIONS:
            raise ValueError(
                f"c2rope: attn_implementation={implementation!r} cannot take the Chebyshev image "
                f"mask of C2RoPEConfig(mask={self.config.mask!r}); it works with "
                f"{', '.join(repr(i) for i in MASKABLE_IMPLEMENTATIONS)} (e.g. "
                "model.set_attn_implementation('sdpa')), or use C2RoPEConfig(mask='causal'), which "
                "keeps the model's own causal mask and works with every implementation"
            )
