"""The Dask cluster a scene runs on: a new local one, a scheduler's, or one shared by many scenes.

:func:`connect` starts a ``LocalCluster`` (quiet workers, see :class:`QuietWorker`) or connects
to a scheduler; :func:`shared_client` keeps one client open for a bucket's scenes, and
:func:`scene_client` is the client a scene uses: the one given, else the shared one, else a new
cluster from the config's ``dask`` section for the scene's duration (the whole job: the same
workers infer the tiles and then polygonize the stitched rasters, when :func:`workers_see` them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import dask
from dask.distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.config import DaskConfig
from pipeline.io.gdal_env import configure_process


class _NoComputeFailed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


class QuietWorker(WorkerPlugin):
    """For the worker processes of our own local cluster: no noise on the shared terminal.

    They ignore SIGINT: Ctrl-C reaches the whole process group, and the client alone
    handles it (it stops the cluster and says how to resume). They do not log a failed task
    ("Compute Failed", its arguments and traceback): the client reports its error, once; nor
    the tasks cancelled when the client stops the cluster after an error or Ctrl-C.
    """

    name = "footprints-quiet-worker"

    def setup(self, worker: Any) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        logging.getLogger("distributed.worker").addFilter(_NoComputeFailed())
        logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


#: Environment for the worker processes' thread pools (DESIGN.md, "Performance"): OpenMP threads
#: sleep as soon as a parallel region ends instead of spinning (libgomp's default is 300,000
#: spins, GOMP_SPINCOUNT). Between the many short parallel regions of the segmenter's PyTorch
#: resampling, spinning threads burned 3-5 times the CPU of the work itself on the shared cores,
#: the more so beside OpenVINO's own threads. A value set in the environment wins.
THREAD_ENVIRON = {"OMP_WAIT_POLICY": "PASSIVE"}


def thread_environ() -> dict[str, str]:
    """:data:`THREAD_ENVIRON`, where the environment does not already set a variable."""
    return {key: os.environ.get(key, value) for key, value in THREAD_ENVIRON.items()}


class ProcessSettings(WorkerPlugin):
    """Applies :func:`pipeline.io.gdal_env.configure_process` (GDAL's cache, S3) on every worker,
    and :data:`THREAD_ENVIRON` on a scheduler's workers that did not start with it, before torch
    (and with it OpenMP, which reads it once) is imported there."""

    name = "footprints-process-settings"

    def setup(self, worker: Any) -> None:
        configure_process()
        if "torch" not in sys.modules:
            for key, value in THREAD_ENVIRON.items():
                os.environ.setdefault(key, value)


def file_stats(paths: Sequence[str]) -> list[tuple[int, int] | None]:
    """Size and modification time (ns) of each file, None where it cannot be seen."""
    out: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return out


def workers_see(client: Any, paths: Sequence[str]) -> bool:
    """True when every worker of ``client`` sees ``paths`` as this process does (same sizes and
    modification times): a local cluster, or one sharing this machine's file system."""
    local = file_stats(paths)
    if None in local:
        return False
    seen = client.run(file_stats, list(paths))
    return bool(seen) and all(stats == local for stats in seen.values())


_SHARED: list[Client] = []


@contextlib.contextmanager
def shared_client(
    *, scheduler: str | None, n_workers: int = 1, threads_per_worker: int = 1, dashboard: str | None = None
) -> Iterator[Client]:
    """One client for many scenes (a bucket): :func:`active_client` returns it meanwhile,
    so every scene reuses the cluster and the models already loaded on its workers."""
    with connect(
        scheduler=scheduler, n_workers=n_workers, threads_per_worker=threads_per_worker, dashboard=dashboard
    ) as c:
        _SHARED.append(c)
        try:
            yield c
        finally:
            _SHARED.remove(c)


def active_client() -> Client | None:
    """The innermost :func:`shared_client`, if one is open in this process."""
    return _SHARED[-1] if _SHARED else None


@contextlib.contextmanager
def connect(
    *, scheduler: str | None, n_workers: int = 1, threads_per_worker: int = 1, dashboard: str | None = None
) -> Iterator[Client]:
    """A client to ``scheduler`` (``tcp://HOST:PORT``) or to a new ``LocalCluster``.

    A local cluster serves no dashboard (so no port is taken, and no warning when 8787 is
    busy) unless ``dashboard`` gives its address, e.g. ``127.0.0.1:8787`` (bokeh serves it;
    when that port is taken Dask picks another: ``client.dashboard_link`` tells which).
    """
    if scheduler:
        with Client(scheduler) as client:  # type: ignore[no-untyped-call]
            client.register_plugin(ProcessSettings(), name=ProcessSettings.name)
            yield client
        return
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    environ = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MALLOC_TRIM_THRESHOLD_": "65536",
        "MALLOC_ARENA_MAX": "2",
        **thread_environ(),
    }
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard,
            scheduler_kwargs=(
                {"dashboard": True, "dashboard_address": dashboard}
                if dashboard
                else {"dashboard": False, "dashboard_address": "127.0.0.1:0"}  # not 8787: may be taken
            ),
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        client.register_plugin(QuietWorker(), name=QuietWorker.name)
        client.register_plugin(ProcessSettings(), name=ProcessSettings.name)
        yield client


@contextlib.contextmanager
def scene_client(client: Any | None, dask_config: DaskConfig) -> Iterator[Any]:
    """``client``, else :func:`active_client`, else a new cluster for the block (``dask_config``)."""
    client = client or active_client()
    if client is not None:
        yield client
        return
    dc = dask_config
    with connect(
        scheduler=dc.scheduler,
        n_workers=dc.n_workers,
        threads_per_worker=dc.threads_per_worker,
        dashboard=dc.dashboard,
    ) as c:
        yield c
