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

Image cells (the Chebyshev mask, `chebyshev.py`): an image token may also carry, above
bit CELL_SHIFT of each row, where it lies in its image: (raster index + 1, h, w). Such a
token is always tagged (an integral position too: its float32 bits decode to the same
number), and decoding its position ignores the cell.
"""
from __future__ import annotations

import torch

FLOAT_TAG = 1 << 40
_TAGGED_FROM = FLOAT_TAG // 2
CELL_SHIFT = 41  # cells use bits 41..62: values below 2**22
_CELL_LIMIT = 1 << (63 - CELL_SHIFT)


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
    # The low 32 bits, sign-extended (a cell above them is dropped); untagged entries
    # give garbage here and are not selected.
    low = (encoded - FLOAT_TAG) & 0xFFFFFFFF
    floats = (low - ((low >> 31) << 32)).to(torch.int32).view(torch.float32)
    return torch.where(tagged, floats, encoded.to(torch.float32))


def attach_cells(encoded: torch.Tensor, positions: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """`encoded` (encode_positions(positions)) with int64 cells [3, L] attached to the
    tokens whose cells[0] > 0 (tagged, cell above CELL_SHIFT); others unchanged."""
    if cells.dtype != torch.int64 or cells.shape != encoded.shape:
        raise ValueError(f"cells must be int64 of shape {tuple(encoded.shape)}, got {cells.dtype} "
                         f"{tuple(cells.shape)}")
    if bool((cells < 0).any()) or bool((cells >= _CELL_LIMIT).any()):
        raise ValueError(f"cells must be in [0, 2**{63 - CELL_SHIFT})")
    bits = positions.contiguous().view(torch.int32).to(torch.int64) + FLOAT_TAG + (cells << CELL_SHIFT)
    return torch.where(cells[:1] > 0, bits, encoded)


def decode_cells(encoded: torch.Tensor) -> torch.Tensor:
    """int64 [3, N]: the cells `attach_cells` put there (0 for every other token)."""
    tagged = encoded >= _TAGGED_FROM
    return torch.where(tagged, (encoded - FLOAT_TAG + (1 << 31)) >> CELL_SHIFT, torch.zeros_like(encoded))


__all__ = ["CELL_SHIFT", "FLOAT_TAG", "attach_cells", "decode_cells", "decode_positions", "encode_positions"]
