"""Peak memory of one measurement, measured (not a delta that can read 0): imported by the bench scripts."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

__all__ = ["peak_mb"]


def peak_mb(fn):
    """(seconds, peak MB) of ``fn()``: see the module doc for how the peak is taken."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
        reset = True
    except OSError:
        reset = False
    if reset and status.exists():
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return dt, int(hwm.split()[1]) / 1024
    import threading

    import psutil

    proc, peak, stop = psutil.Process(), [0], [False]

    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    stop[0] = True
    th.join()
    return dt, peak[0] / 2**20
