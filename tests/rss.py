"""Peak resident memory of a command and all its child processes (Dask workers too)."""

from __future__ import annotations

import subprocess
import time

import psutil


def run_with_peak_rss(
    cmd: list[str], *, interval: float = 0.05, timeout: float = 900
) -> tuple[int, int, str]:
    """Run ``cmd``; return (exit code, peak summed RSS in bytes of its process tree, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    start = time.monotonic()
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        peak = max(peak, total)
        if time.monotonic() - start > timeout:
            proc.kill()
            break
        time.sleep(interval)
    _, err = proc.communicate()
    return proc.returncode, peak, err
