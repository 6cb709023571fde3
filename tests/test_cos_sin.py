"""torch.ops.c2rope.cos_sin and c2rope.rotary_cos_sin against the reference."""
import math

import pytest
import torch

import c2rope
from c2rope.reference import cos_sin_ref


def random_problem(batch, seq, n_axes, half, device):
    # Half-integer and negative positions as C2RoPE's centred coordinates produce.
    positions = (torch.randint(-40, 600, (batch, seq, n_axes), device=device) / 2).float()
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 2 * half, 2).float() / (2 * half)))
    axis = torch.randint(0, n_axes, (half,)).tolist()
    return positions, inv_freq.to(device), axis


@pytest.mark.parametrize("seq", [1, 7, 577])
@pytest.mark.parametrize("n_axes", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float_outputs_equal_reference_bitwise(device, seq, n_axes, dtype):
    # The reference is HF's own sequence of torch ops, so equality here is equality
    # with HF's rotary embedding for any axis assignment.
    positions, inv_freq, axis = random_problem(2, seq, n_axes, 16, device)
    scaling = [1.0, 0.8 + torch.rand(()).item()][int(torch.randint(0, 2, ()).item())]
    cos, sin = c2rope.rotary_cos_sin(positions, inv_freq, axis, scaling, dtype)
    cos_ref, sin_ref = cos_sin_ref(positions, inv_freq, axis, scaling, dtype)
    assert cos.dtype == dtype and cos.shape == (2, seq, 32) and cos.is_contiguous()
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)


@pytest.mark.parametrize("n_axes", [1, 3])
def test_float64_output_is_double_precision_trig(device, n_axes):
    positions, inv_freq, axis = random_problem(3, 11, n_axes, 8, device)
    cos, sin = c2rope.rotary_cos_sin(positions, inv_freq, axis, 1.25, torch.float64)
    # The angle is the float32 product; only the trigonometry is in double.
    angle = (positions[..., axis] * inv_freq).double()
    angle = torch.cat((angle, angle), -1)
    torch.testing.assert_close(cos, angle.cos() * 1.25, rtol=0, atol=1e-14)
    torch.testing.assert_close(sin, angle.sin() * 1.25, rtol=0, atol=1e-14)


def test_strided_positions(device):
    base = torch.randn(2, 9, 5, device=device) * 100
    positions = base[:, :, 1:4]  # not contiguous
    inv_freq = torch.rand(6, device=device)
    axis = [0, 1, 2, 2, 1, 0]
    got = c2rope.rotary_cos_sin(positions, inv_freq, axis)
    want = cos_sin_ref(positions.contiguous(), inv_freq, axis)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    got64 = c2rope.rotary_cos_sin(positions.transpose(0, 1).contiguous().transpose(0, 1),
                                  inv_freq, axis, dtype=torch.float64)
    want64 = cos_sin_ref(positions, inv_freq, axis, dtype=torch.float64)
    torch.testing.assert_close(got64, want64, rtol=0, atol=1e-14)


def test_integer_2d_positions_are_one_axis(device):
    position_ids = torch.arange(13, device=device).repeat(2, 1)
    inv_freq = torch.rand(4, device=device)
    cos, sin = c2rope.rotary_cos_sin(position_ids, inv_freq, [0, 0, 0, 0])
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), -1)
    assert torch.equal(cos, emb.cos()) and torch.equal(sin, emb.sin())


def test_tensor_axis_table(device):
    positions, inv_freq, axis = random_problem(1, 5, 3, 4, device)
    got = c2rope.rotary_cos_sin(positions, inv_freq, torch.tensor(axis, device=device))
    want = cos_sin_ref(positions, inv_freq, axis)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_slot_uses_its_axis(device):
    # Slot k must follow axis[k] alone: moving another component leaves it unchanged.
    positions = torch.zeros(1, 1, 3, device=device)
    positions[..., 2] = 3.0
    cos, sin = c2rope.rotary_cos_sin(positions, torch.ones(3, device=device), [0, 1, 2])
    assert cos[0, 0, :2].tolist() == [1.0, 1.0]
    assert math.isclose(sin[0, 0, 2].item(), math.sin(3.0), rel_tol=1e-6)
    assert math.isclose(sin[0, 0, 5].item(), math.sin(3.0), rel_tol=1e-6)


def test_empty_batch_and_sequence(device):
    for shape in ((0, 4, 3), (2, 0, 3)):
        cos, sin = c2rope.rotary_cos_sin(torch.zeros(shape, device=device),
                                         torch.ones(4, device=device), [0, 1, 2, 0])
        assert cos.shape == (*shape[:2], 8) and sin.shape == cos.shape


def test_opcheck_cos_sin(device):
    positions, inv_freq, axis = random_problem(2, 7, 3, 8, device)
    axis = torch.tensor(axis, dtype=torch.int32, device=device)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        torch.library.opcheck(torch.ops.c2rope.cos_sin, (positions, inv_freq, axis, 1.0, dtype))


def test_op_refuses_out_of_range_axis_on_cpu():
    with pytest.raises(ValueError, match="axis entries"):
        torch.ops.c2rope.cos_sin(torch.zeros(1, 2, 2), torch.ones(2),
                                 torch.tensor([0, 2], dtype=torch.int32), 1.0, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int64_axis_is_range_checked_before_narrowing(dtype):
    # 2**32 would wrap to a valid 0 in int32.
    positions, inv_freq = torch.zeros(1, 2, 2), torch.ones(2)
    bad = torch.tensor([0, 2**32])
    with pytest.raises(ValueError, match=r"axis entries must be in \[0, 2\), got range \[0, 4294967296\]"):
        torch.ops.c2rope.cos_sin(positions, inv_freq, bad, 1.0, dtype)
    with pytest.raises(ValueError, match="axis entries"):
        c2rope.rotary_cos_sin(positions, inv_freq, bad, dtype=dtype)
    with pytest.raises(ValueError, match="axis entries"):
        c2rope.rotary_cos_sin(positions, inv_freq, [0, 2**32], dtype=dtype)


def test_int64_axis_table(device):
    positions, inv_freq, axis = random_problem(2, 5, 3, 4, device)
    got = torch.ops.c2rope.cos_sin(positions, inv_freq, torch.tensor(axis, device=device), 1.0, torch.float32)
    want = cos_sin_ref(positions, inv_freq, axis)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_host_axis_table_with_any_device(device):
    # The op accepts a CPU axis table whatever the device of positions (and checks it).
    positions, inv_freq, axis = random_problem(2, 5, 3, 4, device)
    got = torch.ops.c2rope.cos_sin(positions, inv_freq, torch.tensor(axis), 1.0, torch.float32)
    want = cos_sin_ref(positions, inv_freq, axis)
    assert got[0].device == positions.device
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_float64_positions_beyond_float32_are_refused(device):
    pos = torch.zeros(1, 3, 3, dtype=torch.float64, device=device)
    pos[0, 1, 0] = 1e300  # finite in float64, Inf once cast to float32
    with pytest.raises(ValueError, match="positions contains NaN or Inf"):
        c2rope.rotary_cos_sin(pos, torch.ones(2, device=device), [0, 1])
    with pytest.raises(ValueError, match="position_ids contains NaN or Inf"):
        c2rope.C2RotaryEmbedding(dim=16, device=device)(torch.zeros(1, 3, 4, device=device), pos)
