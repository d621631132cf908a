"""The heap is handed back between stages: freed memory stops counting in RSS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: 3,000 pairs of a 64 KB buffer and a small one after it, then the 64 KB ones freed: about
#: 190 MB of holes inside the heap, which glibc keeps (only free space at its top goes back).
FRAGMENT = """
import json
import numpy as np
from pipeline.core.memory import trim_heap

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

pairs = [(np.ones(65536 // 8), np.ones(80)) for _ in range(3000)]
big = rss()
for i, (a, b) in enumerate(pairs):
    pairs[i] = (None, b)
del a
freed = rss()
trimmed = trim_heap() and rss()
print(json.dumps({"big": big, "freed": freed, "trimmed": trimmed}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_holes_go_back_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True)
    rss = json.loads(out.stdout)
    assert rss["freed"] > rss["big"] - 50, rss  # freed, yet still resident: the holes
    assert rss["trimmed"] < rss["freed"] - 120, rss  # handed back by the trim
