"""C2RoPE positions through vLLM's integer M-RoPE position buffer, exactly.

vLLM keeps a request's M-RoPE positions as int64 [3, L] and decodes text at
`index + delta` with an integer delta. C2RoPE's image coordinates are not integers
(centred coordinates are half-integers, an image's mean m under "concentric" any
rational), and no integer re-scaling can hold them while decoding stays `index + delta`.
So a non-integer position travels as the bit pattern of its float32 value, tagged:

    q = FLOAT_TAG + int32 bits of float32(p)     (p not an integer)
    q = p                                         (p an integer: text, decoding)

FLOAT_TAG = 2**40 is far beyond any real position (vLLM's positions are < max_model_len),
and the decoded value is bit for bit the float32 transformers' rotary receives, so the
rotation is the same number.
"""
from __future__ import annotations

import torch

FLOAT_TAG = 1 << 40
_TAGGED_FROM = FLOAT_TAG // 2


def encode_positions(positions: torch.Tensor) -> torch.Tensor:
    """float32 positions -> int64 for vLLM's buffer (integers as themselves)."""
    if not isinstance(positions, torch.Tensor) or positions.dtype != torch.float32:
        raise TypeError("positions must be a float32 tensor")
    if not bool(torch.isfinite(positions).all()) or bool((positions.abs() >= _TAGGED_FROM).any()):
        raise ValueError("positions must be finite and smaller than 2**39")
    integral = positions == positions.round()
    bits = positions.contiguous().view(torch.int32).to(torch.int64) + FLOAT_TAG
    return torch.where(integral, positions.to(torch.int64), bits)


def decode_positions(encoded: torch.Tensor) -> torch.Tensor:
    """int64 positions from vLLM's buffer -> the float32 values they stand for."""
    tagged = encoded >= _TAGGED_FROM
    # Untagged entries wrap to garbage here and are not selected.
    floats = (encoded - FLOAT_TAG).to(torch.int32).view(torch.float32)
    return torch.where(tagged, floats, encoded.to(torch.float32))


__all__ = ["FLOAT_TAG", "decode_positions", "encode_positions"]
