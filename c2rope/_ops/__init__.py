"""Fake (meta) kernels and autograd formulas for every torch.ops.c2rope op.

One module per op family; importing this package registers them all.
"""
from . import cos_sin, mask, rotary  # noqa: F401
