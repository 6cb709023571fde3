"""The device rule, as the fake kernels need it.

The dispatcher sends a call with any meta tensor among its arguments to the op's fake
kernel, so the ATen checks (csrc/torch/) never see a call that mixes meta and real
tensors: the fake kernels refuse it with the same message.
"""


def check_one_device(op: str, **tensors) -> None:
    (first, t0), *rest = tensors.items()
    for name, t in rest:
        if t.device != t0.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {first} is on {t0.device}; "
                "all tensors must be on one device"
            )
