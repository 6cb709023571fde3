"""Shared fixtures: the devices to test on and a fresh random seed per test.

Every test draws fresh random inputs: the seed changes on every run and is printed in
the header and, when a test fails, after the failures (set C2ROPE_TEST_SEED to replay a
failing run).
"""
import os
import random
import zlib

import pytest
import torch

_SEED = int(os.environ.get("C2ROPE_TEST_SEED", random.SystemRandom().randrange(2**31)))
# Tests that re-run themselves in a fresh process (test_hf_common.in_fresh_process) inherit it.
os.environ["C2ROPE_TEST_SEED"] = str(_SEED)

import c2rope  # noqa: E402,F401  (registers torch.ops.c2rope)

# Tests are parametrised over the devices this machine has: CUDA cases exist only where
# a GPU is visible and the CUDA kernels were built (C2ROPE_CUDA=1), so no test is
# skipped forever on a CPU-only machine. The header says when a GPU goes untested.
_CUDA_BUILT = torch.ops.c2rope.built_with_cuda()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _CUDA_BUILT else [])


def pytest_report_header(config):
    lines = [f"c2rope test seed: C2ROPE_TEST_SEED={_SEED}; devices: {DEVICES}"]
    if torch.cuda.is_available() and not _CUDA_BUILT:
        lines.append("c2rope: a GPU is visible but the CUDA kernels were not built "
                     "(C2ROPE_CUDA=1): CUDA is NOT tested in this run")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # `pytest -q` (the README's command) hides the header: a failing run names its seed at
    # the end, next to the failures, so it can be replayed.
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        terminalreporter.write_line(f"c2rope: replay this run with C2ROPE_TEST_SEED={_SEED}")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    seed = (_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(seed)
    random.seed(seed)
    yield seed


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
