"""``footprints`` with one fault injected, for the fault tests of tests/system/test_faults.py.

    python -m tests.faultrun FAULT segment INPUT --out OUTDIR ...

FAULT is one of:

- ``kill-after-batch:N``: SIGKILL this process once N batches were stitched (and recorded: the
  manifest is flushed after every batch here, not at most once a second, so what the resumed run
  can reuse does not depend on how fast the first batches came);
- ``kill-at-vectorize``: SIGKILL it when the vectorize stage starts;
- ``kill-after-upload:N``: SIGKILL it once N of the five outputs were published;
- ``kill-worker:N,M``: SIGKILL the Dask worker that ran batch N, later the one that ran batch M;
- ``sigint-after-batch:N``: SIGINT to the whole process group after N batches (as Ctrl-C does);
- ``pause-after-batch:N:FILE``: after N batches, create FILE.ready and wait until FILE exists.

Each hook wraps a function that the scene job (:data:`pipeline.run.job.STAGES`, the batch feeder)
or :mod:`pipeline.run.outdir` looks up at call time, so the run is the real one up to the fault.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pipeline.run.feeder
import pipeline.run.job
import pipeline.run.outdir
import pipeline.run.restart


def _after_batches(action: Any) -> None:
    """Call ``action(batch_number, batch)`` after each stitched batch."""
    feeder = pipeline.run.feeder.BatchFeeder
    original = feeder.__call__
    count = {"n": 0}

    def call(self: Any, batch: Any) -> None:
        original(self, batch)
        count["n"] += 1
        action(count["n"], batch)

    feeder.__call__ = call  # type: ignore[method-assign]


def _kill_self() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    if kind == "kill-after-batch":
        pipeline.run.restart.FLUSH_SECONDS = 0.0
        _after_batches(lambda n, _: _kill_self() if n == int(arg) else None)
    elif kind == "kill-at-vectorize":
        pipeline.run.job.STAGES = tuple(
            dataclasses.replace(s, run=lambda *_: _kill_self()) if s.name == "vectorize" else s
            for s in pipeline.run.job.STAGES
        )
    elif kind == "kill-after-upload":
        upload, done = pipeline.run.outdir.upload, {"n": 0}

        def counted(local: Path, target: Any) -> None:
            upload(local, target)
            done["n"] += 1
            if done["n"] == int(arg):
                _kill_self()

        pipeline.run.outdir.upload = counted
    elif kind == "kill-worker":
        victims = {int(n) for n in arg.split(",")}
        _after_batches(lambda n, batch: os.kill(batch.worker_pid, signal.SIGKILL) if n in victims else None)
    elif kind == "sigint-after-batch":
        _after_batches(lambda n, _: os.killpg(os.getpgid(0), signal.SIGINT) if n == int(arg) else None)
    elif kind == "pause-after-batch":
        number, _, flag = arg.partition(":")
        _after_batches(lambda n, _: _pause(Path(flag)) if n == int(number) else None)
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")


def _pause(flag: Path) -> None:
    flag.with_name(flag.name + ".ready").touch()
    while not flag.exists():
        time.sleep(0.05)


if __name__ == "__main__":
    # a shell starts background jobs with SIGINT ignored, and children inherit that; a user's
    # terminal does not, so restore Python's Ctrl-C handler (else `make test &` fails the test)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install(sys.argv[1])
    sys.argv = ["footprints", *sys.argv[2:]]
    from pipeline.cli.main import main

    main()
