"""Shared helpers of the transformers 5.x HF tests: tiny random models built in code (no
downloads) and an independent reference forward (c2rope.reference positions, cos/sin
and mask, fed to the *unpatched* model through HF's own rotate-half and 4-D mask path).
Skipped as a whole under transformers < 4.57 (tests/legacy covers 4.37)."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
_MAJOR_MINOR = tuple(int(p) for p in transformers.__version__.split(".")[:2])
if _MAJOR_MINOR < (4, 57):
    pytest.skip("transformers 4.57 / 5.x tests (tests/legacy covers 4.37)", allow_module_level=True)

import c2rope  # noqa: E402
from c2rope.reference.mask import chebyshev_mask_ref  # noqa: E402
from c2rope.reference.positions import position_ids_ref  # noqa: E402
from c2rope.reference.rotary import cos_sin_ref  # noqa: E402

VOCAB = 96
IMG = 95  # image placeholder id
FAMILIES = ("llama", "mistral", "qwen2")


def text_config(family, **overrides):
    fields = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        pad_token_id=0,
    )
    if family in ("mistral", "qwen2"):
        fields["sliding_window"] = None
    fields.update(overrides)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[family]
    return cls(**fields)


def causal_lm(family, implementation="sdpa", **overrides):
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                 "qwen2": transformers.Qwen2ForCausalLM}[family]
    model = model_cls(text_config(family, **overrides)).eval()
    model.set_attn_implementation(implementation)
    return model


def batch_with_images(batch, seq, grids, left_pad=(), vocab=VOCAB - 1):
    """Random ids [batch, seq] with image runs; returns (ids, attention_mask, spans).

    grids: per row, a list of (start, H, W) counted from the first valid token.
    left_pad: per row, number of padding tokens on the left."""
    ids = torch.randint(1, vocab - 1, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    spans = []
    for b in range(batch):
        pad = left_pad[b] if b < len(left_pad) else 0
        mask[b, :pad] = 0
        ids[b, :pad] = 0
        row = []
        for start, h, w in grids[b] if b < len(grids) else []:
            ids[b, pad + start: pad + start + h * w] = IMG
            row.append((pad + start, h, w))
        spans.append(row)
    return ids, mask, spans


def in_fresh_process(request) -> bool:
    """Run the calling test alone in a new Python process, with the same seed; True in the
    parent once the child passed (the parent then returns), False inside the child.

    For flex_attention on CPU: transformers compiles flex once per process, and torch
    2.13's CPU inductor returns wrong values (even NaN) or fails to compile once it sees a
    second sequence length, with or without c2rope (docs/hf.md, Caveats)."""
    import os
    import subprocess
    import sys

    node = request.node.nodeid
    if os.environ.get("C2ROPE_ISOLATED_TEST") == node:
        return False
    env = dict(os.environ, C2ROPE_ISOLATED_TEST=node)  # the conftest put the run's seed in C2ROPE_TEST_SEED
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          cwd=str(request.config.rootpath), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{node} in a fresh process:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return True


def cache_of(output):
    """The KV cache a forward returned (`.cache` from 5.24, `.past_key_values` before)."""
    from c2rope.hf.introspect import output_cache

    return output_cache(output)


def cache_kwargs(model, cache):
    """{name: cache} under the name this release's forward takes (`cache` from 5.24)."""
    from c2rope.hf.introspect import cache_argument

    return {cache_argument(type(model).forward): cache}


def find_decoder(model):
    from c2rope.hf.families.llama import find_decoder as find

    return find(model)


def reference_logits(model, config, ids, attention_mask, spans, **forward_kwargs):
    """Logits of the C2RoPE model computed by the UNPATCHED `model` (eager attention):
    reference triplets -> reference cos/sin through HF's own rotary path, and the
    reference Chebyshev mask as a 4-D additive mask."""
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    decoder = find_decoder(model)
    rotary = decoder.rotary_emb
    seq = ids.shape[1]
    layout = c2rope.VisualLayout.from_spans(spans, seq, attention_mask=attention_mask)
    positions = position_ids_ref(spans, layout.valid, config)
    inv_freq = rotary.inv_freq
    cos, sin = cos_sin_ref(positions, inv_freq, config.axis_table(2 * inv_freq.numel()),
                           rotary.attention_scaling)
    rotary.forward = lambda x, position_ids=None, **kw: (cos.to(x.dtype), sin.to(x.dtype))
    mask = chebyshev_mask_ref(layout.valid, layout.image_id, layout.ring, mode=config.mask,
                              dtype=torch.float32)
    with torch.no_grad():
        if "inputs_embeds" in forward_kwargs:  # the embeddings stand for `ids` (their spans)
            return model(attention_mask=mask, **forward_kwargs).logits
        return model(input_ids=ids, attention_mask=mask, **forward_kwargs).logits


def assert_close_valid(actual, expected, attention_mask, atol=1e-5, rtol=1e-5):
    """Compare logits on non-padding positions (padding rows are garbage by design)."""
    valid = attention_mask.bool()
    torch.testing.assert_close(actual[valid], expected[valid], atol=atol, rtol=rtol)


def assert_text_only_unchanged(model, left_pad=(4, 0), config=None):
    """Patching `model` leaves its text-only logits (2 rows, left padding) as they were."""
    ids, mask, _ = batch_with_images(2, 20, [], left_pad=left_pad)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        c2rope.patch_model(model, config or c2rope.C2RoPEConfig())
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
