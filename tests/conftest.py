"""Shared fixtures: the devices to test on and a fresh random seed per test.

Every test draws fresh random inputs: the seed changes on every run and is printed in
the header (set C2ROPE_TEST_SEED to replay a failing run).
"""
import os
import random
import zlib

import pytest
import torch

_SEED = int(os.environ.get("C2ROPE_TEST_SEED", random.SystemRandom().randrange(2**31)))

# Tests are parametrised over the devices this machine has: CUDA tests exist only where
# CUDA does (no test is skipped forever on a CPU-only machine).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_report_header(config):
    return f"c2rope test seed: C2ROPE_TEST_SEED={_SEED}; devices: {DEVICES}"


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    seed = (_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(seed)
    random.seed(seed)
    yield seed


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
