"""What a served class adds to vLLM's for the Chebyshev image mask (chebyshev.py), shared
by the Qwen-VL (qwen.py, qwen3.py) and LLaVA (llava.py) classes: the mask installed in
every attention layer, the step's positions handed to it, the image cells attached to a
prompt's positions. Nothing here runs for a causal checkpoint (chebyshev.py is imported
only under the mask)."""
from __future__ import annotations

import torch

from .positions import attach_cells
from .servable import MASKS


class ChebyshevMaskMixin:
    """Ahead of vLLM's model class: `_install_mask` after it is built, then every forward
    hands its positions to the mask's layers (outside the compiled text model)."""

    c2rope_mask = None

    def _install_mask(self, mode: str, attention_layers, vllm_config, windows: bool = False) -> None:
        """mode: the checkpoint's C2RoPEConfig.mask (or "block": chebyshev.MODES); attention_layers:
        vLLM's Attention of every text layer; windows: keep their sliding windows (chebyshev.install).
        Nothing for "causal"; ValueError where the mask cannot be served."""
        self.c2rope_mask = None
        if mode == "causal":
            return
        from . import chebyshev

        self.c2rope_mask = chebyshev.MaskState(mode)
        chebyshev.install(list(attention_layers), self.c2rope_mask, vllm_config, windows)

    def forward(self, *args, **kwargs):
        if self.c2rope_mask is not None:
            self.c2rope_mask.step(kwargs["positions"] if "positions" in kwargs else args[1])
        return super().forward(*args, **kwargs)


def with_cells(encoded: torch.Tensor, positions: torch.Tensor, spans, mode: str) -> torch.Tensor:
    """`encoded` (encode_positions(positions), [rows, L]) with every image token's cell
    (raster index + 1, h, w of its grid: spans [(start, h, w, ...)]) on its first three
    rows, under the Chebyshev mask; unchanged under "causal"."""
    if mode == "causal":
        return encoded
    from .chebyshev import image_cells

    cells = image_cells(spans, encoded.shape[1])
    cells = torch.cat([cells, cells.new_zeros(encoded.shape[0] - cells.shape[0], cells.shape[1])])
    return attach_cells(encoded, positions, cells)


__all__ = ["ChebyshevMaskMixin", "MASKS", "with_cells"]
