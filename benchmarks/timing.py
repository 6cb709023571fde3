"""Wall-clock timing shared by the benchmark scripts: medians with their spread."""
import statistics
import time

import torch


def sync(device):
    """Wait for queued GPU work, so a wall-clock interval covers it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device=None, repeats=10, warmup=2):
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def summary(times):
    """(median, p25, p75) of a list of times; (median, min, max) for fewer than 4."""
    values = sorted(times)
    if len(values) < 4:
        return statistics.median(values), values[0], values[-1]
    q = statistics.quantiles(values, n=4)
    return statistics.median(values), q[0], q[2]
