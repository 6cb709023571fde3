"""options={"frame_axis": "separate"} through vLLM: a 4th M-RoPE position row (docs/serving.md).

vLLM sizes a request's M-RoPE position buffer by the length of the text config's
`mrope_section` (`mrope_num_dims`: one row per section entry, at least 3) and fills every
row with `index + delta` when decoding. So a checkpoint recorded with the frame axis gets
a 4th, empty section ([t, h, w] -> [t, h, w, 0]) in vLLM's copy of its config, before the
engine sizes its buffers (`verify_and_update_model_config`, vLLM's per-architecture config
hook): vLLM's own rotary keeps its three rows (the empty one turns no slot), the buffer
gets four, and the plugin fills the 4th with c2rope's frame row (`frame_positions`). Text
and decoding steps then hold m on all four rows, which is what transformers' patched model
gives them (frame = m outside videos).
"""
from __future__ import annotations

import torch

from ..mrope import frame_axis_positions
from ..serving import KEY

FRAME_ROWS = 4


def separate_frame_axis(hf_config) -> bool:
    """Whether the checkpoint recorded options["frame_axis"] = "separate"."""
    entry = getattr(hf_config, KEY, None)
    return isinstance(entry, dict) and (entry.get("options") or {}).get("frame_axis") == "separate"


def add_frame_section(model_config) -> None:
    """vLLM's config hook for the serving architectures: give the text config's M-RoPE
    section a 4th, empty entry when the frame axis is recorded (once)."""
    hf_config = model_config.hf_config
    if not separate_frame_axis(hf_config):
        return
    text = hf_config.get_text_config()
    for name in ("rope_parameters", "rope_scaling"):
        parameters = getattr(text, name, None)
        if isinstance(parameters, dict) and parameters.get("mrope_section") is not None:
            section = list(parameters["mrope_section"])
            if len(section) == 3:
                parameters["mrope_section"] = section + [0]
            elif len(section) != FRAME_ROWS or section[-1] != 0:
                raise ValueError(f"c2rope.vllm: expected a 3-entry mrope_section in {name}, got {section}")


def frame_positions(three_rows: torch.Tensor, spans) -> torch.Tensor:
    """float32 [4, S]: the (t, h, w) rows [3, S] of one prompt and its frame row."""
    frame = frame_axis_positions(three_rows.unsqueeze(1).to(torch.float32), [spans])[0]
    return torch.cat([three_rows.to(torch.float32), frame.unsqueeze(0)], dim=0)


__all__ = ["FRAME_ROWS", "add_frame_section", "frame_positions", "separate_frame_axis"]
