"""The M-RoPE family (c2rope.mrope) against transformers' own Qwen2-VL / Qwen2.5-VL
get_rope_index and Qwen2-VL / Qwen3-VL rotary embeddings, on tiny random configs."""
import random

import pytest
import torch

from c2rope.circle import CircleRoPEConfig, circle_position_ids
from c2rope.mrope import (
    interleaved_mrope_axis_table,
    mm_token_type_ids_from_input_ids,
    mrope_axis_table,
    mrope_cos_sin,
    mrope_decode_position_ids,
    mrope_position_ids,
)

transformers = pytest.importorskip("transformers")

MERGE = 2
IMAGE_ID, VIDEO_ID = 60, 61


def _vision_config():
    return dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, spatial_merge_size=MERGE, patch_size=2,
                in_channels=3, temporal_patch_size=2)


def _text_config(head_dim=8, mrope_section=(1, 1, 2), **extra):
    heads = 2
    return dict(vocab_size=64, hidden_size=head_dim * heads, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=heads, num_key_value_heads=1,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(mrope_section)},
                **extra)


@pytest.fixture(scope="module")
def qwen2_vl():
    cfg = transformers.Qwen2VLConfig(text_config=_text_config(), vision_config=_vision_config(),
                                     image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    return transformers.Qwen2VLModel(cfg).eval()


@pytest.fixture(scope="module")
def qwen2_5_vl():
    cfg = transformers.Qwen2_5_VLConfig(text_config=_text_config(),
                                        vision_config=dict(_vision_config(), out_hidden_size=16, intermediate_size=32,
                                                           tokens_per_second=random.choice([2, 4])),
                                        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    return transformers.Qwen2_5_VLModel(cfg).eval()


def random_prompts(batch, with_videos=False, adjacent=False):
    """Random prompts: text runs (length >= 1 between vision items unless `adjacent`),
    images and videos of random grids; left padding to a common length."""
    rows, image_grids, video_grids = [], [], []
    for _ in range(batch):
        types = [0] * random.randint(0, 3)
        for _ in range(random.randint(0, 3)):
            kind = 2 if with_videos and random.random() < 0.5 else 1
            t = random.randint(1, 3) if kind == 2 else 1
            h, w = random.choice([2, 4, 6]), random.choice([2, 4, 6])
            (video_grids if kind == 2 else image_grids).append((t, h, w))
            types += [kind] * (t * h * w // MERGE**2)
            types += [0] * random.randint(0 if adjacent else 1, 3)
        types += [0] * random.randint(1, 3)
        rows.append(types)
    seq = max(len(r) for r in rows)
    mm = torch.zeros(batch, seq, dtype=torch.long)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for b, r in enumerate(rows):
        mm[b, seq - len(r):] = torch.tensor(r)
        mask[b, seq - len(r):] = 1
    ids = torch.randint(0, 50, (batch, seq))
    ids[mm == 1], ids[mm == 2] = IMAGE_ID, VIDEO_ID
    grid = lambda g: torch.tensor(g, dtype=torch.long).view(-1, 3) if g else None  # noqa: E731
    return ids, mm, mask, grid(image_grids), grid(video_grids)


@pytest.mark.parametrize("trial", range(4))
def test_matches_qwen2_vl_get_rope_index(qwen2_vl, trial):
    ids, mm, mask, images, videos = random_prompts(random.randint(1, 4), with_videos=trial >= 2)
    padded = trial % 2 == 1
    am = mask if padded else None
    if not padded:  # no padding: every row must be full length
        ids, mm, am = ids[:1, mask[0].bool()], mm[:1, mask[0].bool()], None
        n_img, n_vid = int((mm == 1).sum()), int((mm == 2).sum())
        images = _prefix_grids(images, n_img)
        videos = _prefix_grids(videos, n_vid)
    want_pos, want_delta = qwen2_vl.get_rope_index(ids, mm, image_grid_thw=images, video_grid_thw=videos,
                                                  attention_mask=am)
    got_pos, got_delta = mrope_position_ids(ids, images, videos, am, mm_token_type_ids=mm, spatial_merge_size=MERGE)
    assert got_pos.dtype == torch.float32 and got_pos.shape == want_pos.shape
    assert torch.equal(got_pos, want_pos.float())
    assert torch.equal(got_delta, want_delta.float())
    # Placeholder ids give the same result as mm_token_type_ids.
    again = mrope_position_ids(ids, images, videos, am, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    assert torch.equal(again[0], got_pos) and torch.equal(again[1], got_delta)


def _prefix_grids(grids, n_tokens):
    """The first grids covering n_tokens (a single unpadded row uses only its own)."""
    if grids is None:
        return None
    out, total = [], 0
    for g in grids.tolist():
        if total >= n_tokens:
            break
        out.append(g)
        total += g[0] * g[1] * g[2] // MERGE**2
    return torch.tensor(out).view(-1, 3) if out else None


@pytest.mark.parametrize("padded", [False, True])
def test_matches_qwen2_5_vl_get_rope_index_with_videos(qwen2_5_vl, padded):
    ids, mm, mask, images, videos = random_prompts(random.randint(2, 4), with_videos=True)
    n_videos = 0 if videos is None else videos.shape[0]
    seconds = torch.tensor([random.choice([0.5, 1.0, 2.0, 0.3]) for _ in range(n_videos)]) if n_videos else None
    am = mask if padded else None
    if not padded:
        mm = mm * mask  # left padding as text tokens: still a valid, full-length prompt
    want_pos, want_delta = qwen2_5_vl.get_rope_index(ids, mm, image_grid_thw=images, video_grid_thw=videos,
                                                    second_per_grid_ts=seconds, attention_mask=am)
    tps = qwen2_5_vl.config.vision_config.tokens_per_second
    got_pos, got_delta = mrope_position_ids(ids, images, videos, am, mm_token_type_ids=mm, spatial_merge_size=MERGE,
                                            second_per_grid_ts=seconds, tokens_per_second=tps)
    assert torch.equal(got_pos, want_pos.float())
    assert torch.equal(got_delta, want_delta.float())


def test_hand_computed_example_and_adjacent_images():
    # text(2) | 2x2 image | 1x1 image (adjacent) | text(1) | 1x2x3 grid -> merged 1x3? (6x4 -> 3x2)
    mm = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0]])
    grids = torch.tensor([[1, 4, 4], [1, 2, 2], [1, 6, 4]])
    pos, delta = mrope_position_ids(mm_token_type_ids=mm, image_grid_thw=grids)
    want = torch.tensor([
        [0, 1, 2, 2, 2, 2, 4, 5, 6, 6, 6, 6, 6, 6, 9],
        [0, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8, 8, 9],
        [0, 1, 2, 3, 2, 3, 4, 5, 6, 7, 6, 7, 6, 7, 9],
    ], dtype=torch.float32)
    assert torch.equal(pos[:, 0], want)
    assert delta.tolist() == [[10 - 15]]


def test_circle_positions_in_a_sequence():
    cfg = CircleRoPEConfig(alpha=random.random(), radius=random.choice([10.0, "auto", "auto-2"]))
    mm = torch.tensor([[0, 0, 0] + [1] * 6 + [0, 0] + [1] * 4 + [0]])
    grids = torch.tensor([[1, 4, 6], [1, 4, 4]])
    pos, delta = mrope_position_ids(mm_token_type_ids=mm, image_grid_thw=grids, circle=cfg)
    pos = pos[:, 0].double()
    assert torch.equal(pos[:, :3], torch.arange(3.0, dtype=torch.float64).expand(3, -1))
    first = circle_position_ids((1, 2, 3), cfg.alpha, cfg.radius).double() + 3
    torch.testing.assert_close(pos[:, 3:9], first, rtol=0, atol=1e-5)
    start = float(first.max()) + 1  # following text starts at max + 1
    torch.testing.assert_close(pos[:, 9:11], (start + torch.arange(2.0, dtype=torch.float64)).expand(3, -1))
    second = circle_position_ids((1, 2, 2), cfg.alpha, cfg.radius).double() + start + 2
    torch.testing.assert_close(pos[:, 11:15], second, rtol=0, atol=1e-5)
    last = float(second.max()) + 1
    torch.testing.assert_close(pos[:, 15], torch.full((3,), last, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(delta, torch.tensor([[last + 1 - 16]]), rtol=0, atol=1e-5)


def test_text_only_is_plain_arange_with_and_without_circle():
    mm = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    for circle in (None, CircleRoPEConfig()):
        pos, delta = mrope_position_ids(mm_token_type_ids=mm, attention_mask=mask, circle=circle)
        assert torch.equal(pos[:, 0], torch.arange(7.0).expand(3, -1))
        assert torch.equal(pos[:, 1], torch.tensor([0, 0, 0, 0, 1, 2, 3.0]).expand(3, -1))
        assert delta.tolist() == [[0.0], [0.0]]


@pytest.mark.parametrize("circle", [None, CircleRoPEConfig(radius="auto-1.5")])
def test_decode_positions_continue_the_prompt(circle):
    # Positions of prompt + k generated text tokens, built in one go, equal the prompt's
    # positions followed by mrope_decode_position_ids from its rope_deltas.
    ids, mm, mask, images, videos = random_prompts(random.randint(1, 3))
    k = random.randint(1, 4)
    full_mm = torch.cat([mm, torch.zeros(mm.shape[0], k, dtype=torch.long)], dim=1)
    full_mask = torch.cat([mask, torch.ones(mm.shape[0], k, dtype=torch.long)], dim=1)
    full, _ = mrope_position_ids(mm_token_type_ids=full_mm, image_grid_thw=images, attention_mask=full_mask,
                                 circle=circle)
    prompt, delta = mrope_position_ids(mm_token_type_ids=mm, image_grid_thw=images, attention_mask=mask,
                                       circle=circle)
    seq = mm.shape[1]
    assert torch.equal(full[..., :seq], prompt)
    step = mrope_decode_position_ids(delta, k, past_length=seq, attention_mask=full_mask)
    torch.testing.assert_close(step, full[..., seq:], rtol=0, atol=1e-5)
    # Without padding the text index is just past_length + arange.
    if bool(mask.all()):
        torch.testing.assert_close(mrope_decode_position_ids(delta, k, past_length=seq), full[..., seq:],
                                   rtol=0, atol=1e-5)


def test_mm_token_type_ids_from_input_ids():
    ids = torch.tensor([[1, IMAGE_ID, VIDEO_ID, 3]])
    assert mm_token_type_ids_from_input_ids(ids, IMAGE_ID, VIDEO_ID).tolist() == [[0, 1, 2, 0]]
    assert mm_token_type_ids_from_input_ids(ids, IMAGE_ID).tolist() == [[0, 1, 0, 0]]


def test_empty_inputs():
    pos, delta = mrope_position_ids(mm_token_type_ids=torch.zeros(0, 5, dtype=torch.long))
    assert pos.shape == (3, 0, 5) and delta.shape == (0, 1)
    pos, delta = mrope_position_ids(mm_token_type_ids=torch.zeros(2, 0, dtype=torch.long))
    assert pos.shape == (3, 2, 0) and delta.tolist() == [[0.0], [0.0]]
    assert mrope_decode_position_ids(torch.zeros(2, 1), 0).shape == (3, 2, 0)


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        (dict(), ValueError, "mm_token_type_ids"),
        (dict(input_ids=torch.zeros(1, 4, dtype=torch.long)), ValueError, "image_token_id"),
        (dict(mm_token_type_ids=torch.zeros(1, 4)), TypeError, "mm_token_type_ids"),
        (dict(mm_token_type_ids=torch.zeros(4, dtype=torch.long)), ValueError, "mm_token_type_ids"),
        (dict(mm_token_type_ids=torch.tensor([[0, 3]])), ValueError, "mm_token_type_ids"),
        (dict(mm_token_type_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3)), TypeError,
         "attention_mask"),
        (dict(mm_token_type_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.long)),
         ValueError, "attention_mask"),
        (dict(mm_token_type_ids=torch.zeros(1, 4, dtype=torch.long), input_ids=torch.zeros(2, 4, dtype=torch.long)),
         ValueError, "input_ids"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1, 1, 1, 1]])), ValueError, "image_grid_thw"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1, 1, 1]]), image_grid_thw=torch.tensor([[1, 4, 4]])), ValueError,
         "shorter than its grid"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1, 1, 1, 1]]), image_grid_thw=torch.tensor([[1, 4, 4], [1, 2, 2]])),
         ValueError, "image_grid_thw has 2 grids"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1]]), image_grid_thw=torch.tensor([[1, 3, 2]])), ValueError,
         "divisible"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1]]), image_grid_thw=torch.tensor([[1.0, 2, 2]])), TypeError,
         "image_grid_thw"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1]]), image_grid_thw=torch.tensor([1, 2, 2])), ValueError,
         "image_grid_thw"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1]]), image_grid_thw=torch.tensor([[0, 2, 2]])), ValueError,
         "image_grid_thw"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1]]), image_grid_thw=[1, 2, 2]), ValueError, "image_grid_thw"),
        (dict(mm_token_type_ids=torch.tensor([[0, 1]]), image_grid_thw="122"), TypeError, "image_grid_thw"),
        (dict(mm_token_type_ids=torch.tensor([[0, 2]])), ValueError, "video_grid_thw"),
        (dict(mm_token_type_ids=torch.tensor([[0, 2]]), video_grid_thw=[[1, 2, 2]], second_per_grid_ts=[1.0]),
         ValueError, "tokens_per_second"),
        (dict(mm_token_type_ids=torch.tensor([[0, 0]]), spatial_merge_size=0), ValueError, "spatial_merge_size"),
        (dict(mm_token_type_ids=torch.tensor([[0, 0]]), circle=dict(alpha=0.5)), TypeError, "circle"),
    ],
)
def test_bad_position_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        mrope_position_ids(**kwargs)


def test_bad_decode_arguments():
    with pytest.raises(TypeError, match="rope_deltas"):
        mrope_decode_position_ids([[0]], 1)
    with pytest.raises(ValueError, match="rope_deltas"):
        mrope_decode_position_ids(torch.zeros(2), 1)
    with pytest.raises(ValueError, match="seq_len"):
        mrope_decode_position_ids(torch.zeros(2, 1), -1)
    with pytest.raises(ValueError, match="past_length"):
        mrope_decode_position_ids(torch.zeros(2, 1), 1, past_length=1.5)
    with pytest.raises(ValueError, match="attention_mask"):
        mrope_decode_position_ids(torch.zeros(2, 1), 1, past_length=2, attention_mask=torch.ones(2, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- axis tables


def test_axis_tables():
    assert mrope_axis_table([16, 24, 24]) == [0] * 16 + [1] * 24 + [2] * 24
    assert mrope_axis_table([16, 24, 24], dim=128) == mrope_axis_table()
    table = interleaved_mrope_axis_table([24, 20, 20], 128)
    assert len(table) == 64 and table[:6] == [0, 1, 2, 0, 1, 2]
    assert table[60:] == [0, 0, 0, 0] and table.count(1) == 20 and table.count(2) == 20
    with pytest.raises(ValueError, match="dim"):
        mrope_axis_table([16, 24, 24], dim=64)
    for bad in ([16, 24], [16, -1, 24], [0, 0, 0], [1.0, 2, 3], "abc"):
        with pytest.raises(ValueError, match="mrope_section"):
            mrope_axis_table(bad)
        with pytest.raises(ValueError, match="mrope_section"):
            interleaved_mrope_axis_table(bad, 128)
    with pytest.raises(ValueError, match="dim"):
        interleaved_mrope_axis_table([24, 20, 20], 127)


def _cos_sin_from_axis(position_ids, inv_freq, axis, scaling, dtype):
    """docs/design.md §4 in plain torch: angle = pos[axis[k]] * inv_freq[k] (float32)."""
    pos = position_ids.permute(1, 2, 0).float()[..., torch.as_tensor(axis)]
    angle = pos * inv_freq.float()
    emb = torch.cat([angle, angle], dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def _random_positions(batch, seq, circle):
    if circle:
        return torch.randn(3, batch, seq) * 50 + 100
    return torch.randint(0, 4096, (3, batch, seq))


@pytest.mark.parametrize("circle", [False, True])
def test_chunked_axis_table_matches_qwen2_vl_rotary(circle):
    section = [16, 24, 24]
    text_cfg = transformers.Qwen2VLTextConfig(**_text_config(head_dim=128, mrope_section=section))
    rotary = transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLRotaryEmbedding(text_cfg)
    batch, seq = random.randint(1, 3), random.randint(1, 9)
    position_ids = _random_positions(batch, seq, circle)
    x = torch.randn(batch, seq, 8)
    want_cos, want_sin = rotary(x, position_ids)
    axis = mrope_axis_table(section, dim=128)
    got_cos, got_sin = _cos_sin_from_axis(position_ids, rotary.inv_freq, axis, rotary.attention_scaling, x.dtype)
    assert torch.equal(got_cos, want_cos) and torch.equal(got_sin, want_sin)


@pytest.mark.parametrize("circle", [False, True])
def test_interleaved_axis_table_matches_qwen3_vl_rotary(circle):
    section = [24, 20, 20]
    text_cfg = transformers.Qwen3VLTextConfig(**_text_config(head_dim=128, mrope_section=section), head_dim=128)
    rotary = transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding(text_cfg)
    batch, seq = random.randint(1, 3), random.randint(1, 9)
    position_ids = _random_positions(batch, seq, circle)
    x = torch.randn(batch, seq, 8)
    want_cos, want_sin = rotary(x, position_ids)
    axis = interleaved_mrope_axis_table(section, 128)
    got_cos, got_sin = _cos_sin_from_axis(position_ids, rotary.inv_freq, axis, rotary.attention_scaling, x.dtype)
    assert torch.equal(got_cos, want_cos) and torch.equal(got_sin, want_sin)


@pytest.mark.parametrize("layout", ["chunked", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mrope_cos_sin_kernel_matches_hf(layout, dtype, device):
    if layout == "chunked":
        section = [16, 24, 24]
        text_cfg = transformers.Qwen2VLTextConfig(**_text_config(head_dim=128, mrope_section=section))
        rotary = transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VLRotaryEmbedding(text_cfg)
        axis = mrope_axis_table(section)
    else:
        section = [24, 20, 20]
        text_cfg = transformers.Qwen3VLTextConfig(**_text_config(head_dim=128, mrope_section=section), head_dim=128)
        rotary = transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding(text_cfg)
        axis = interleaved_mrope_axis_table(section, 128)
    batch, seq = random.randint(1, 3), random.choice([1, 7, 33])
    position_ids = _random_positions(batch, seq, circle=True)
    want_cos, want_sin = rotary(torch.randn(1, dtype=dtype), position_ids)
    got_cos, got_sin = mrope_cos_sin(position_ids.to(device), rotary.inv_freq.to(device), axis,
                                     rotary.attention_scaling, dtype)
    assert got_cos.shape == (batch, seq, 128) and got_cos.dtype == dtype
    tol = dict(rtol=0, atol=2e-6) if dtype == torch.float32 else dict(rtol=0, atol=1e-2)
    torch.testing.assert_close(got_cos.cpu(), want_cos, **tol)
    torch.testing.assert_close(got_sin.cpu(), want_sin, **tol)
    # Text-only [B, S] positions broadcast to the three axes.
    text = torch.arange(seq).expand(batch, -1)
    got_cos, _ = mrope_cos_sin(text.to(device), rotary.inv_freq.to(device), axis, 1.0, torch.float32)
    want_cos, _ = rotary(torch.randn(1), text.unsqueeze(0).expand(3, -1, -1))
    torch.testing.assert_close(got_cos.cpu(), want_cos, rtol=0, atol=2e-6)


def test_mrope_cos_sin_bad_positions():
    with pytest.raises(TypeError, match="position_ids"):
        mrope_cos_sin([[1.0]], torch.ones(4), [0] * 4)
    with pytest.raises(ValueError, match="position_ids"):
        mrope_cos_sin(torch.zeros(2, 1, 3), torch.ones(4), [0] * 4)


def test_mrope_cos_sin_compiles_fullgraph():
    axis = torch.tensor(mrope_axis_table([2, 3, 3]), dtype=torch.int32)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    compiled = torch.compile(lambda p: mrope_cos_sin(p, inv_freq, axis, 1.0, torch.float32), fullgraph=True)
    positions = torch.randn(3, 2, random.randint(1, 9)) * 10
    for got, want in zip(compiled(positions), mrope_cos_sin(positions, inv_freq, axis, 1.0, torch.float32)):
        assert torch.equal(got, want)


def test_positions_follow_the_input_device(device):
    mm = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], device=device)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], device=device)
    grids = torch.tensor([[1, 4, 4], [1, 4, 4]], device=device)
    for circle in (None, CircleRoPEConfig()):
        pos, delta = mrope_position_ids(mm_token_type_ids=mm, image_grid_thw=grids, attention_mask=mask, circle=circle)
        assert pos.device.type == device.type and delta.device.type == device.type
        want, want_delta = mrope_position_ids(mm_token_type_ids=mm.cpu(), image_grid_thw=grids.cpu(),
                                              attention_mask=mask.cpu(), circle=circle)
        assert torch.equal(pos.cpu(), want) and torch.equal(delta.cpu(), want_delta)
        step = mrope_decode_position_ids(delta, 2, past_length=6)
        assert step.device.type == device.type
