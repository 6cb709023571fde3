"""The device-generic implementations (csrc/torch/generic_ops.cpp): what the dispatcher
runs on a device without a c2rope kernel (CUDA without the CUDA build, MPS, XPU, ...).

Here they run on the CPU two ways: called directly (the kernel the dispatcher computes
for PrivateUse1, a device key no c2rope kernel is registered for) and compared with the
C kernels and the float64 references; and end to end in a subprocess whose CPU kernels
are not registered (C2ROPE_DISABLE_KERNELS=1), so the dispatcher itself routes CPU
tensors to them, through the public API, autograd, opcheck and torch.compile.
"""
import os
import random
import subprocess
import sys

import pytest
import torch

from c2rope._ops.paths import OPS, op_path, op_paths
from c2rope.reference import chebyshev_mask_ref, cos_sin_ref, rotary_backward_ref, rotary_ref
from layouts import random_layout  # noqa: E402
from test_rotary import TOL, make_heads, make_tables  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = list(TOL)


def generic(op):
    """The op's generic implementation, called on CPU tensors."""
    kernel = torch.library.get_kernel(f"c2rope::{op}", "PrivateUse1")
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    return lambda *args: kernel.call_boxed(keyset, *args)


def test_dispatcher_table():
    # Kernels win where they are registered; every other device gets the generic path.
    paths = op_paths()
    for op in OPS:
        assert paths["cpu"][op] == "kernel"
        assert paths["cuda"][op] == ("kernel" if torch.ops.c2rope.built_with_cuda() else "generic")
        assert paths["mps"][op] == paths["xpu"][op] == "generic"
        assert paths["meta"][op] == "fake"


# ---- rotary ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "sliced", "strided_last"])
@pytest.mark.parametrize("seq", [1, 7, 65])
def test_rotary_equals_kernel_and_reference(dtype, layout, seq):
    hq, hk, dim = 4, random.choice([1, 2, 4]), random.choice([8, 24, 32])
    rot = random.choice([r for r in (2, 8, dim) if r <= dim])  # partial rotary too
    batch = random.randint(1, 3)
    q = make_heads(batch, hq, seq, dim, dtype, "cpu", layout)
    k = make_heads(batch, hk, seq, dim, dtype, "cpu", layout)
    table_dtype = random.choice([dtype, torch.float32])
    cos, sin = make_tables(random.choice([1, batch]), seq, rot, table_dtype, "cpu")
    for op, ref in (("rotary", rotary_ref), ("rotary_backward", rotary_backward_ref)):
        got = generic(op)(q, k, cos, sin)
        want = getattr(torch.ops.c2rope, op)(q, k, cos, sin)
        for g, w, r in zip(got, want, ref(q, k, cos, sin)):
            # Same products and sums in the same order, rounded once: bit for bit.
            assert torch.equal(g, w), op
            assert g.stride() == w.stride()
            torch.testing.assert_close(g, r, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_inplace_equals_out_of_place(dtype):
    q = make_heads(2, 4, 9, 16, dtype, "cpu", "bshd")
    k = make_heads(2, 2, 9, 16, dtype, "cpu", "sliced")
    cos, sin = make_tables(1, 9, 12, dtype, "cpu")
    want = torch.ops.c2rope.rotary(q, k, cos, sin)
    generic("rotary_")(q, k, cos, sin)
    assert torch.equal(q, want[0]) and torch.equal(k, want[1])


def test_rotary_empty():
    q, k = torch.randn(0, 2, 3, 8), torch.randn(0, 1, 3, 8)
    cos, sin = make_tables(1, 3, 8, torch.float32, "cpu")
    q_out, k_out = generic("rotary")(q, k, cos, sin)
    assert q_out.shape == q.shape and k_out.shape == k.shape


# ---- cos_sin -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis_dtype", [torch.int32, torch.int64])
def test_cos_sin_equals_kernel(dtype, axis_dtype):
    batch, seq, n_axes, half = 2, random.choice([1, 7, 65]), 3, 8
    positions = (torch.randint(-40, 600, (batch, seq + 2, n_axes)) / 2).float()[:, 1:-1]  # strided
    inv_freq = torch.rand(half)
    axis = torch.randint(0, n_axes, (half,), dtype=axis_dtype)
    scaling = 0.8 + random.random()
    got = generic("cos_sin")(positions, inv_freq, axis, scaling, dtype)
    want = torch.ops.c2rope.cos_sin(positions, inv_freq, axis, scaling, dtype)
    ref = cos_sin_ref(positions, inv_freq, axis, float(torch.tensor(scaling, dtype=torch.float32)), dtype)
    for g, w, r in zip(got, want, ref):
        assert g.dtype == dtype and g.is_contiguous()
        if dtype == torch.float64:  # the C kernel's libm vs ATen's double cos/sin
            torch.testing.assert_close(g, w, rtol=0, atol=1e-14)
        else:  # the CPU op computes float tables with these very ATen ops
            assert torch.equal(g, w)
        torch.testing.assert_close(g, r, rtol=0, atol=1e-14 if dtype == torch.float64 else 0)


# ---- chebyshev_mask ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float16, torch.bfloat16])
def test_mask_equals_kernel_and_reference(mode, dtype):
    for _ in range(3):
        layout = random_layout(batch=random.randint(1, 3))
        seq = layout.seq_len
        q_offset = random.randint(0, seq)
        q_len = random.randint(0, seq - q_offset)
        valid = layout.valid if random.random() < 0.5 else layout.valid.to(torch.uint8)
        args = (valid, layout.image_id, layout.ring, q_offset, q_len, mode, dtype)
        got = generic("chebyshev_mask")(*args)
        assert torch.equal(got, torch.ops.c2rope.chebyshev_mask(*args))
        assert torch.equal(got, chebyshev_mask_ref(*args))


def test_mask_non_contiguous_image_ids():
    # Image ids in several runs, random rings and padding: the per-element rule.
    batch, seq = 2, 23
    valid = torch.rand(batch, seq) < 0.8
    image_id = torch.randint(-1, 2, (batch, seq), dtype=torch.int32)
    ring = torch.randint(0, 4, (batch, seq), dtype=torch.int32)
    for mode in range(3):
        args = (valid, image_id, ring, 3, seq - 3, mode, torch.float16)
        assert torch.equal(generic("chebyshev_mask")(*args), chebyshev_mask_ref(*args))


# ---- one set of checks -------------------------------------------------------------

_q, _k = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 5, 8)
_cs = torch.randn(1, 5, 8)
_v, _g, _r = torch.ones(2, 5, dtype=torch.bool), torch.full((2, 5), -1, dtype=torch.int32), torch.zeros(2, 5, dtype=torch.int32)


@pytest.mark.parametrize(
    "op, args",
    [
        ("rotary", (_q, _k[:, :, :3], _cs, _cs)),
        ("rotary", (_q.long(), _k.long(), _cs, _cs)),
        ("rotary_backward", (_q, _k, _cs[..., :3], _cs[..., :3])),
        ("rotary_", (_q[:, :1].expand(1, 2, 5, 8), _k, _cs, _cs)),
        ("cos_sin", (torch.zeros(1, 2, 2), torch.ones(2), torch.tensor([0, 2**32]), 1.0, torch.float32)),
        ("cos_sin", (torch.zeros(1, 2, 2), torch.ones(2), torch.tensor([0, 1.0]), 1.0, torch.float32)),
        ("chebyshev_mask", (_v, _g, _r, 3, 3, 0, torch.bool)),
        ("chebyshev_mask", (_v, _g, _r, 0, 5, 0, torch.float64)),
    ],
)
def test_generic_refuses_what_the_kernel_refuses(op, args):
    with pytest.raises(Exception) as by_kernel:
        getattr(torch.ops.c2rope, op)(*args)
    with pytest.raises(type(by_kernel.value)) as by_generic:
        generic(op)(*args)
    assert isinstance(by_kernel.value, (TypeError, ValueError, RuntimeError))
    assert str(by_generic.value).splitlines()[0] == str(by_kernel.value).splitlines()[0]


# ---- the dispatcher's choice, end to end -------------------------------------------


def test_cpu_without_kernels_takes_the_generic_path(tmp_path):
    # A subprocess with no kernel registered: the dispatcher routes CPU tensors to the
    # generic implementations. It checks them through the public API, autograd, opcheck
    # and torch.compile, then saves results that must equal this process's kernels.
    root = os.path.dirname(HERE)  # this checkout's c2rope, not an installed one
    env = dict(os.environ, C2ROPE_DISABLE_KERNELS="1",
               PYTHONPATH=os.pathsep.join([root] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    seed = random.randrange(2**31)
    out = tmp_path / "generic.pt"
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "generic_path_check.py"), str(seed), str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=root,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    saved = torch.load(out)
    from generic_path_check import compute  # noqa: E402

    assert op_path("rotary", "cpu") == "kernel"  # this process still has its kernels
    want = compute(seed)
    assert saved.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(saved[name], value), name


def test_info_reports_the_generic_path():
    env = dict(os.environ, C2ROPE_DISABLE_KERNELS="1")
    done = subprocess.run([sys.executable, "-m", "c2rope", "info"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(HERE))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert rows["device"] == list(OPS)
    assert rows["cpu"] == ["generic"] * len(OPS) and rows["mps"] == ["generic"] * len(OPS)
    assert rows["meta"] == ["fake"] * len(OPS)
