"""A patched model used the way client code uses models: deep copies, threads, explicit
layouts without a cache, pickling, beam search and several returned sequences, calls
that fail half-way, attribute access right after `import c2rope`, and the probe that
refuses a patch that would silently do nothing."""
import copy
import io
import subprocess
import sys
import threading

import pytest
import torch

from test_hf_common import (  # noqa: F401  (skips under transformers < 4.57)
    IMG, assert_close_valid, batch_with_images, causal_lm, reference_logits, transformers,
)
from test_hf_llava import tiny_llava

import c2rope

GRIDS = [(3, 4), (2, 2), (3, 3)]


def _images_batch(seq=40):
    return batch_with_images(2, seq, [[(3, 3, 4)], [(2, 2, 2), (17, 3, 3)]], left_pad=(0, 5))


def _logits(model, ids, mask, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kw).logits


def test_deepcopy_runs_the_copys_own_weights_and_unpatches_alone():
    config = c2rope.C2RoPEConfig()
    model = causal_lm("llama")
    ids, mask, spans = _images_batch()
    c2rope.patch_model(model, config, image_token_id=IMG, grid=GRIDS)
    before = _logits(model, ids, mask)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.model.layers[0].mlp.parameters():
            p.mul_(1.5)
    # what the copy must compute: a fresh model with the same (scaled) weights, patched
    scaled = copy.deepcopy(clone)
    c2rope.unpatch_model(scaled)
    expected = reference_logits(scaled, config, ids, mask, spans)
    got = _logits(clone, ids, mask)
    assert_close_valid(got, expected, mask)
    assert (got - before)[mask.bool()].abs().max() > 1e-3  # the copy is not the original
    torch.testing.assert_close(_logits(model, ids, mask), before, rtol=0, atol=0)
    c2rope.unpatch_model(clone)
    assert not c2rope.hf.is_patched(clone) and c2rope.hf.is_patched(model)
    assert all("forward" not in vars(m) for m in clone.modules())
    torch.testing.assert_close(_logits(model, ids, mask), before, rtol=0, atol=0)


def test_two_threads_share_one_patched_model():
    model = causal_lm("llama")
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    images = _images_batch()
    text = batch_with_images(2, 33, [], left_pad=(3, 0))
    expected = {name: _logits(model, ids, mask) for name, (ids, mask, _) in (("images", images), ("text", text))}
    barrier = threading.Barrier(2)
    errors = []

    def worker(name, ids, mask):
        try:
            barrier.wait()
            for _ in range(15):
                torch.testing.assert_close(_logits(model, ids, mask), expected[name], rtol=0, atol=0)
        except Exception as exc:  # reported by the main thread
            errors.append(f"{name}: {exc}")

    threads = [threading.Thread(target=worker, args=(name, ids, mask))
               for name, (ids, mask, _) in (("images", images), ("text", text))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


def test_visual_layout_applies_without_a_cache_to_a_longer_input():
    config = c2rope.C2RoPEConfig()
    model = causal_lm("llama")
    ids, mask, spans = _images_batch()
    ids = ids.masked_fill(ids == IMG, 7)
    prompt_layout = c2rope.VisualLayout.from_spans(spans, ids.shape[1], attention_mask=mask)
    longer = torch.cat([ids, torch.randint(1, IMG - 1, (2, 5))], dim=1)
    longer_mask = torch.cat([mask, torch.ones(2, 5, dtype=mask.dtype)], dim=1)
    expected = reference_logits(model, config, longer, longer_mask, spans)
    c2rope.patch_model(model, config)
    got = _logits(model, longer, longer_mask, visual_layout=prompt_layout)
    assert_close_valid(got, expected, longer_mask)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
              suppress_tokens=[IMG], visual_layout=prompt_layout, output_scores=True, return_dict_in_generate=True)
    cached, uncached = model.generate(**kw, use_cache=True), model.generate(**kw, use_cache=False)
    torch.testing.assert_close(cached.sequences, uncached.sequences, rtol=0, atol=0)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_visual_layout_cut_by_the_input_end_is_refused():
    model = causal_lm("llama")
    ids, mask, spans = _images_batch()
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    layout = c2rope.VisualLayout.from_spans(spans, ids.shape[1], attention_mask=mask)
    with pytest.raises(ValueError, match="visual_layout"):
        _logits(model, ids[:, :8], mask[:, :8], visual_layout=layout)  # row 0's image is cut at 8


def test_pickling_a_patched_model_says_to_unpatch_first():
    model = causal_lm("llama")
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG)
    with pytest.raises(TypeError, match="unpatch_model"):
        torch.save(model, io.BytesIO())
    torch.save(model.state_dict(), io.BytesIO())  # the state_dict saves as usual
    c2rope.unpatch_model(model)
    torch.save(model, io.BytesIO())


@pytest.mark.parametrize("mode", ["beams", "return_sequences", "sampling"])
def test_generate_expands_the_batch_with_images(mode):
    model = tiny_llava("sdpa")
    ids, mask, _ = batch_with_images(2, 30, [[(3, 4, 4)], [(2, 4, 4)]], left_pad=(0, 4))
    pixels = torch.randn(2, 3, 8, 8)
    c2rope.patch_model(model, c2rope.C2RoPEConfig())
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=4, pad_token_id=0,
              suppress_tokens=[IMG])
    kw.update({"beams": dict(num_beams=3, do_sample=False),
               "return_sequences": dict(num_beams=2, num_return_sequences=2, do_sample=False),
               "sampling": dict(do_sample=True, num_return_sequences=2)}[mode])
    torch.manual_seed(1)
    cached = model.generate(**kw, use_cache=True)
    torch.manual_seed(1)
    uncached = model.generate(**kw, use_cache=False)
    assert cached.shape[0] == 2 * (1 if mode == "beams" else 2)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


def test_a_failed_call_leaves_nothing_behind():
    model = causal_lm("llama")
    c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG, grid=GRIDS)
    ids, mask, _ = _images_batch()
    text, text_mask, _ = batch_with_images(2, 20, [])
    expected = _logits(model, text, text_mask)
    layout = c2rope.VisualLayout.from_spans([[(0, 2, 2)], []], 20)
    with pytest.raises((TypeError, ValueError)):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, visual_layout=layout,
                       not_an_argument=1)
    with pytest.raises(ValueError):
        _logits(model, ids, mask[:, :3], visual_layout=layout)  # fails inside the patched forward
    torch.testing.assert_close(_logits(model, text, text_mask), expected, rtol=0, atol=0)
    from c2rope.hf import context

    assert context.innermost() is None


def test_is_patched_right_after_import():
    code = ("import c2rope, torch; m = torch.nn.Linear(1, 1); "
            "print(c2rope.hf.is_patched(m), c2rope.is_patched(m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def _drop_kwarg_hook(name, replacement):
    def hook(module, args, kwargs):
        if name in kwargs:
            kwargs[name] = replacement(kwargs[name])
        return args, kwargs
    return hook


def test_probe_refuses_a_layer_that_never_gets_the_mask():
    model = causal_lm("llama", "sdpa")
    model.model.layers[1].self_attn.register_forward_pre_hook(_drop_kwarg_hook("attention_mask", lambda m: None),
                                                              with_kwargs=True)
    with pytest.raises(RuntimeError, match="layer 1 .*mask"):
        c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG)
    assert not c2rope.hf.is_patched(model)  # refused patches are undone
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"), image_token_id=IMG)  # no mask to check


def test_probe_refuses_a_layer_that_rotates_by_other_tables():
    model = causal_lm("llama", "sdpa")

    def plain_tables(embeddings):
        cos, sin = embeddings
        return torch.ones_like(cos), torch.zeros_like(sin)

    model.model.layers[0].self_attn.register_forward_pre_hook(
        _drop_kwarg_hook("position_embeddings", plain_tables), with_kwargs=True)
    with pytest.raises(RuntimeError, match="layer 0 .*positions"):
        c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG)
    assert not c2rope.hf.is_patched(model)


def test_probe_skipped_on_meta_weights():
    with torch.device("meta"):
        model = causal_lm("llama")
    with pytest.warns(UserWarning, match="meta"):
        c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=IMG)
    assert c2rope.hf.is_patched(model)


def test_patch_forward_and_generate_print_no_deprecation_warnings():
    # transformers 5.24+ warns once per process when `past_key_values` is read: c2rope must not
    # read deprecated names (a fresh process, since the warning is printed only once).
    script = """
import torch, transformers, c2rope
config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=2)
model = transformers.LlamaForCausalLM(config).eval()
c2rope.patch_model(model, c2rope.C2RoPEConfig(), image_token_id=63, grid=(2, 2))
ids = torch.tensor([[1, 2, 63, 63, 63, 63, 3, 4]])
with torch.no_grad():
    model(input_ids=ids)
# a random model may emit the image token: a decoding step reads it as text (docs/hf.md, Caveats)
model.generate(ids, max_new_tokens=3, do_sample=False)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deprecated" not in (done.stdout + done.stderr).lower(), done.stderr[-3000:]
