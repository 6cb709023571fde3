"""A patched Qwen-VL model's get_rope_index takes a 0/1 float padding mask, as transformers'
own does: LLaMA-Factory's collator calls it with `(attention_mask >= 1).float()`."""
import pytest
import torch

from test_hf_common import transformers  # noqa: F401  (skips under transformers < 4.57)

import c2rope
import qwen_tiny


def _rope_index(model):
    return model.model.get_rope_index if hasattr(model.model, "get_rope_index") else model.get_rope_index


@pytest.mark.parametrize("kind", qwen_tiny.KINDS)
def test_float_padding_mask_is_the_integer_one(kind):
    model = qwen_tiny.make_model(kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    inputs, _ = qwen_tiny.make_prompt(kind, videos=False)
    args = {k: inputs[k] for k in ("input_ids", "image_grid_thw", "mm_token_type_ids") if k in inputs}
    expected = _rope_index(model)(**args, attention_mask=inputs["attention_mask"])
    got = _rope_index(model)(**args, attention_mask=(inputs["attention_mask"] >= 1).float())
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="attention_mask"):
        _rope_index(model)(**args, attention_mask=inputs["attention_mask"] * 0.5)
