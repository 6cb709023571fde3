"""C2RotaryEmbedding and apply_rotary_pos_emb against transformers' own Llama modules
(tiny random configs built here, nothing downloaded)."""
import pytest
import torch

import c2rope
from c2rope.reference import rotary_ref

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

ROPE_PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
        "rope_theta": 500000.0,
    },
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "yarn": {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 32,
        "rope_theta": 10000.0,
    },
}


def tiny_config(rope_type="default", head_dim=32):
    return LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rope_parameters=dict(ROPE_PARAMETERS[rope_type]),
    )


def hf_rotary(rope_type, device, head_dim=32):
    return modeling_llama.LlamaRotaryEmbedding(tiny_config(rope_type, head_dim)).to(device)


def position_ids(batch, seq, device, offset=0):
    start = torch.randint(0, 5, (batch, 1), device=device) + offset
    return start + torch.arange(seq, device=device)


def assert_same(got, want):
    assert got[0].dtype == want[0].dtype
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seq", [1, 7, 577])
def test_default_module_matches_hf_bitwise(device, dtype, seq):
    hf = hf_rotary("default", device)
    ours = c2rope.C2RotaryEmbedding(dim=32, base=10000.0, device=device)
    x = torch.randn(2, seq, 64, device=device, dtype=dtype)
    pid = position_ids(2, seq, device)
    assert_same(ours(x, pid), hf(x, pid))


@pytest.mark.parametrize("rope_type", ["default", "linear", "llama3", "yarn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_from_hf_matches_hf_bitwise(device, rope_type, dtype):
    hf = hf_rotary(rope_type, device)
    ours = c2rope.C2RotaryEmbedding.from_hf(hf)
    assert ours.inv_freq.dtype == torch.float32
    assert "inv_freq" not in ours.state_dict()  # non-persistent, like HF's
    x = torch.randn(3, 40, 64, device=device, dtype=dtype)
    pid = position_ids(3, 40, device, offset=30)
    assert_same(ours(x, pid), hf(x, pid))


def test_from_hf_dynamic_follows_hf_updates(device):
    # Dynamic NTK recomputes inv_freq when the sequence outgrows max_position_embeddings
    # and resets it when it shrinks back: from_hf defers to HF's own update rule.
    ours = c2rope.C2RotaryEmbedding.from_hf(hf_rotary("dynamic", device))
    twin = hf_rotary("dynamic", device)  # an independent module fed the same calls
    x = torch.randn(1, 3, 64, device=device)
    for seq in (10, 100, 150, 20):
        pid = torch.arange(seq, device=device)[None]
        assert_same(ours(x, pid), twin(x, pid))


@pytest.mark.parametrize("rope_type", ["default", "llama3"])
@pytest.mark.parametrize("seq", [7, 577])
def test_c2rope_without_image_equals_hf(device, rope_type, seq):
    # text_spatial="temporal": an image-free sequence is (m, m, m) for every token.
    hf = hf_rotary(rope_type, device)
    ours = c2rope.C2RotaryEmbedding.from_hf(hf, c2rope.C2RoPEConfig())
    x = torch.randn(2, seq, 64, device=device, dtype=torch.bfloat16)
    pid = position_ids(2, seq, device)
    triplets = pid.float()[..., None].expand(2, seq, 3)
    assert_same(ours(x, triplets), hf(x, pid))


def test_c2rope_spatial_slots_follow_x_and_y(device):
    cfg = c2rope.C2RoPEConfig(d_temporal=24, d_spatial=8)  # slots 12..15: x, y, x, y
    rope = c2rope.C2RotaryEmbedding(dim=32, config=cfg, device=device)
    pos = torch.tensor([[[5.0, -1.5, 2.5]]], device=device)
    cos, _ = rope(torch.zeros(1, 1, 4, device=device), pos)
    inv = rope.inv_freq
    want = torch.stack([pos[0, 0, a] * inv[k] for k, a in enumerate([0] * 12 + [1, 2, 1, 2])]).cos()
    assert torch.equal(cos[0, 0, :16], want) and torch.equal(cos[0, 0, 16:], want)


def test_explicit_split_overrides_config():
    rope = c2rope.C2RotaryEmbedding(dim=64, d_temporal=48, d_spatial=16,
                                    config=c2rope.C2RoPEConfig(d_temporal=32, d_spatial=32))
    assert (rope.d_temporal, rope.d_spatial) == (48, 16)
    assert rope.axis.tolist().count(0) == 24


@pytest.mark.parametrize("layout", ["bshd_view", "contiguous"])
def test_apply_matches_hf_exactly_in_float32(device, layout):
    q = torch.randn(2, 9, 4, 32, device=device)
    k = torch.randn(2, 9, 2, 32, device=device)
    if layout == "bshd_view":
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    else:
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    cos, sin = hf_rotary("default", device)(q, position_ids(2, 9, device))
    got = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
    want = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    if device.type == "cpu":
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    else:
        torch.testing.assert_close(got, want)
    assert got[0].stride() == q.stride()  # no hidden copy/relayout


def test_apply_bf16_is_at_least_as_accurate_as_hf(device):
    q = torch.randn(1, 4, 65, 64, device=device, dtype=torch.bfloat16)
    k = torch.randn(1, 1, 65, 64, device=device, dtype=torch.bfloat16)
    cos, sin = hf_rotary("default", device, head_dim=64)(q, position_ids(1, 65, device))
    ours = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
    theirs = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    exact = rotary_ref(q.double(), k.double(), cos, sin)
    for o, t, e in zip(ours, theirs, exact):
        assert (o.double() - e).abs().mean() <= (t.double() - e).abs().mean()
        torch.testing.assert_close(o, t, rtol=2e-2, atol=2e-2)


def test_apply_unsqueeze_dim_2_and_positional_form(device):
    q = torch.randn(2, 9, 4, 32, device=device)  # [B, S, H, D]
    k = torch.randn(2, 9, 2, 32, device=device)
    cos, sin = hf_rotary("default", device)(q, position_ids(2, 9, device))
    want = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    for got in (c2rope.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2),
                c2rope.apply_rotary_pos_emb(q, k, cos, sin, 2)):  # HF 5's positional form
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert got[0].shape == q.shape and got[0].stride() == q.stride()


def test_apply_old_hf_position_ids_form(device):
    # transformers < 4.38: cos/sin were [max_seq, D] caches indexed by position_ids.
    q = torch.randn(2, 4, 6, 16, device=device)
    k = torch.randn(2, 1, 6, 16, device=device)
    table_cos, table_sin = torch.randn(20, 16, device=device), torch.randn(20, 16, device=device)
    pid = position_ids(2, 6, device)
    got = c2rope.apply_rotary_pos_emb(q, k, table_cos, table_sin, pid)
    want = rotary_ref(q, k, table_cos[pid], table_sin[pid])
    torch.testing.assert_close(got, want)


def test_llama_attention_with_fused_rotation(device, monkeypatch):
    # HF's own attention layer, with its apply_rotary_pos_emb swapped for ours.
    cfg = tiny_config("llama3")
    cfg._attn_implementation = "eager"
    attn = modeling_llama.LlamaAttention(cfg, layer_idx=0).to(device).eval()
    rope = hf_rotary("llama3", device)
    hidden = torch.randn(2, 11, 64, device=device)
    pid = position_ids(2, 11, device)
    pe = rope(hidden, pid)
    want, _ = attn(hidden, position_embeddings=pe, attention_mask=None)
    calls = []

    def fused(*args, **kwargs):
        calls.append(1)
        return c2rope.apply_rotary_pos_emb(*args, **kwargs)

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", fused)
    got, _ = attn(hidden, position_embeddings=c2rope.C2RotaryEmbedding.from_hf(rope)(hidden, pid),
                  attention_mask=None)
    assert calls  # the layer really went through the fused op
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
