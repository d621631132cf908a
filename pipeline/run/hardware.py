"""What ran a scene: this host's name and CPU, and the device each worker inferred on.

The client never imports torch, so the inference device is reported by the workers
(:func:`device_label`, called where the model already runs) and gathered by the client
from the batch results. Nothing here starts a process or reads the network: the CPU name
comes from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere).
"""

from __future__ import annotations

import functools
import os
import platform
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "device_label", "host_summary", "summarize_devices"]


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, e.g. ``Intel(R) Xeon(R) Processor``; ``unknown`` if it cannot be told."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_summary() -> dict[str, Any]:
    """This host (the client): its name, CPU model, logical CPU count and platform."""
    return {
        "name": socket.gethostname(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count() or 1,
        "platform": platform.platform(terse=True),
    }


def device_label(device: Any) -> str:
    """``cpu (CPU NAME)`` or ``cuda:0 (GPU NAME)`` for a ``torch.device`` (called on a worker)."""
    kind = str(getattr(device, "type", device))
    index = getattr(device, "index", None)
    return _label(kind, index if isinstance(index, int) else None)


@functools.lru_cache(maxsize=8)
def _label(kind: str, index: int | None) -> str:
    if kind == "cuda":
        import torch

        i = torch.cuda.current_device() if index is None else index
        return f"cuda:{i} ({torch.cuda.get_device_name(i)})"
    return f"{kind} ({cpu_name()})"


def summarize_devices(labels: Iterable[str]) -> dict[str, Any]:
    """What the run records of its devices: the labels seen, and the GPU names among them.

    ``device`` is ``cpu``, ``cuda`` or ``mixed`` (workers on both); ``none`` when every tile
    came from the restart cache or was nodata, so no model ran in this attempt.
    """
    seen = sorted({label for label in labels if label})
    kinds = {label.split(" ", 1)[0].split(":", 1)[0] for label in seen}
    gpus = sorted({label.split(" (", 1)[1].rstrip(")") for label in seen if label.startswith("cuda")})
    device = "none" if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"
    return {"device": device, "devices": seen, "gpus": gpus}
