"""The workers' thread pools: OpenMP threads sleep between parallel regions instead of spinning.

libgomp (PyTorch's OpenMP) spins 300,000 times after each parallel region by default; between the
segmenter's many short resampling regions that burned 3-5 times the CPU of the work on the shared
cores (DESIGN.md, "Performance"). The check is timing-free: libgomp itself reports its spin count
(``OMP_DISPLAY_ENV=VERBOSE``) when torch loads it under a worker's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dask.distributed import Client, LocalCluster

from pipeline.run.cluster import THREAD_ENVIRON, connect, thread_environ


def _worker_environ(client: Client) -> dict[str, str]:
    seen = client.run(lambda: dict(os.environ))
    (environ,) = seen.values()
    return environ


def libgomp_settings(environ: dict[str, str]) -> str:
    """What torch's libgomp says it runs with, when torch is imported under ``environ``."""
    done = subprocess.run(
        [sys.executable, "-c", "import torch; torch.ones(8).add_(1)"],
        env={**environ, "OMP_DISPLAY_ENV": "VERBOSE"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stderr


def test_libgomp_spins_unless_told_to_sleep() -> None:
    """The check below can fail: without the setting torch's libgomp spins."""
    bare = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    assert "GOMP_SPINCOUNT = '300000'" in libgomp_settings(bare)
    assert "GOMP_SPINCOUNT = '0'" in libgomp_settings({**bare, **THREAD_ENVIRON})


def test_an_explicit_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert thread_environ() == {"OMP_WAIT_POLICY": "ACTIVE"}
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert thread_environ() == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.slow
def test_local_workers_start_with_openmp_asleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    with connect(scheduler=None, n_workers=1) as client:
        environ = _worker_environ(client)
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "GOMP_SPINCOUNT = '0'" in libgomp_settings(environ)


@pytest.mark.slow
def test_a_schedulers_workers_get_it_from_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers we did not start (``dask.scheduler``) get it before torch is imported there."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,  # type: ignore[no-untyped-call]
        connect(scheduler=cluster.scheduler_address) as client,
    ):
        assert _worker_environ(client)["OMP_WAIT_POLICY"] == "PASSIVE"
