"""CPU runtimes (model.runtime): the same masks as PyTorch, the ONNX export cache, config errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pipeline.config import default_checkpoint, load_config
from pipeline.core.digest import file_sha256
from pipeline.core.errors import ConfigError
from pipeline.model import export
from pipeline.model.arrays import ArraySegmenter, CellBrightness
from pipeline.model.infer import CheckpointSource, TorchSegmenter, UntrainedSource
from pipeline.model.runtimes import EXPORTED, PIPELINE_ONLY, RUNTIMES, device_type, resolve_runtime
from tests.conftest import DEMO_SCENE, requires_real

CKPT = default_checkpoint()
needs_ckpt = pytest.mark.skipif(CKPT is None, reason="no checkpoint in models/")
#: Agreement with PyTorch fp32 on one real tile, building mask at the checkpoint's threshold.
#: bf16 is opt-in because it misses the 0.995 bar (DESIGN.md, "Performance"); on this tile it
#: agreed at 0.98 or more with the OS-16 model and agrees at 0.979 with the OS-8 default: bar 0.97.
AGREE = {"onnxruntime": 0.995, "openvino": 0.995, "openvino-bf16": 0.97}
PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def demo_tile() -> np.ndarray:
    with rasterio.open(DEMO_SCENE) as ds:  # one tile of the pipeline's grid: 597 px at 0.3 m
        return ds.read([1, 2, 3], window=((200, 797), (200, 797)))[None]


def building_mask(runtime: str, pixels: np.ndarray) -> np.ndarray:
    seg = CheckpointSource(str(CKPT), device="cpu", threads=2, runtime=runtime).load()
    assert (
        isinstance(seg, ArraySegmenter if runtime in EXPORTED else TorchSegmenter) and seg.runtime == runtime
    )
    return seg.predict(pixels, scale=0.3 / 0.35)[0, 0] >= 128


@requires_real
@needs_ckpt
@pytest.mark.slow
@pytest.mark.parametrize("runtime", sorted(AGREE))
def test_each_runtime_gives_the_mask_of_pytorch_on_a_real_tile(
    runtime: str, demo_tile: np.ndarray, cache_home: Path
) -> None:
    if importlib.util.find_spec(PACKAGE[runtime]) is None:
        pytest.skip(f"{PACKAGE[runtime]} is not installed (pip install -r requirements.lock)")
    want, got = building_mask("torch", demo_tile), building_mask(runtime, demo_tile)
    assert want.sum() > 10_000  # the tile has buildings
    iou = np.count_nonzero(want & got) / np.count_nonzero(want | got)
    assert iou >= AGREE[runtime], f"{runtime}: IoU {iou:.4f} with PyTorch fp32"


def _export_count_of(load: int) -> int:
    before = len(export.EXPORTS)
    for _ in range(load):
        CheckpointSource(str(CKPT), device="cpu", threads=1, runtime="onnxruntime").load()
    return len(export.EXPORTS) - before


@needs_ckpt
@pytest.mark.slow
def test_the_export_is_cached_by_checkpoint_and_replaced_when_damaged(cache_home: Path) -> None:
    pytest.importorskip("onnxruntime")
    assert _export_count_of(2) == 1  # the second load reuses the file
    (path,) = (cache_home / "footprints" / "onnx").glob("*.onnx")
    assert CKPT is not None and export.onnx_cache_path(checkpoint_sha256=file_sha256(CKPT)) == path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte among the weights: still loads, wrong numbers
    path.write_bytes(bytes(data))
    assert not export.is_intact(path)
    assert _export_count_of(1) == 1 and export.is_intact(path)
    path.write_bytes(b"truncated")
    assert _export_count_of(1) == 1 and export.is_intact(path)


@needs_ckpt
@pytest.mark.slow
def test_processes_that_start_together_export_once(cache_home: Path) -> None:
    """flock serializes open file descriptions, so two threads stand in for two worker processes."""
    pytest.importorskip("onnxruntime")
    before = len(export.EXPORTS)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            CheckpointSource(str(CKPT), device="cpu", threads=1, runtime="onnxruntime").load()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(export.EXPORTS) - before == 1
    assert [p.name for p in (cache_home / "footprints" / "onnx").iterdir() if ".part" in p.name] == []


def test_a_bad_runtime_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(**{"model.runtime": "tensorrt"})
    message = str(e.value)
    assert "\n" not in message and "model.runtime" in message and "openvino" in message


def test_cpu_runtimes_refuse_a_gpu_and_auto_resolves_by_device() -> None:
    assert resolve_runtime("auto", "cuda") == "torch"
    assert resolve_runtime("auto", "cpu") in RUNTIMES
    with pytest.raises(ConfigError, match=r"model\.runtime=openvino runs on the CPU"):
        resolve_runtime("openvino", "cuda")
    assert device_type("cpu") == "cpu" and device_type("cuda:1") == "cuda"
    assert device_type("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_pipeline_only_stand_in_never_loads_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.model.checkpoint
    import pipeline.model.deeplab
    import pipeline.model.export

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pipeline-only stand-in loaded, built or exported the network")

    monkeypatch.setattr(pipeline.model.checkpoint, "load_checkpoint", refuse)
    monkeypatch.setattr(pipeline.model.deeplab, "build_model", refuse)
    monkeypatch.setattr(pipeline.model.export, "cached_onnx", refuse)
    sources = [UntrainedSource(device="cpu", runtime=PIPELINE_ONLY)]
    if CKPT is not None:
        sources.append(CheckpointSource(str(CKPT), device="cpu", threads=1, runtime=PIPELINE_ONLY))
    for source in sources:
        seg = source.load()
        assert isinstance(seg, ArraySegmenter) and isinstance(seg.run, CellBrightness)
        assert seg.runtime == PIPELINE_ONLY


def test_the_stand_in_is_the_cell_mean_brightness_in_the_models_shape() -> None:
    x = np.zeros((1, 3, 32, 48), dtype=np.float32)  # mid-grey: just above the cut
    x[:, :, :16, :16] = 1.0  # one white 16 px cell
    logits = CellBrightness(classes=3, output_stride=16)(x)
    assert logits.shape == (1, 3, 32, 48)
    assert logits[0, 0, 4, 4] == pytest.approx(12 * 1.1) and logits[0, 0, 28, 44] == pytest.approx(12 * 0.1)
    assert (logits[0, 1:] <= -4.0).all()  # separators stay off: the split keeps blobs whole
    edge = CellBrightness(classes=2, output_stride=16)(np.ones((1, 3, 20, 20), dtype=np.float32))
    assert np.allclose(edge[0, 0], 12 * 1.1)  # a cell cut by the edge averages the pixels it holds


_NO_TORCH = """
import sys
import numpy as np
from pipeline.model.infer import CheckpointSource
seg = CheckpointSource(sys.argv[1], device="auto", threads=1, runtime=sys.argv[2]).load()
prob = seg.predict(np.full((1, 3, 600, 500), 120, np.uint8), scale=0.3 / 0.35)
assert prob.shape[-2:] == (600, 500), prob.shape
print(type(seg).__name__, "torch" in sys.modules)
"""


@needs_ckpt
@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "auto"])
def test_a_worker_running_an_exported_runtime_never_imports_torch(runtime: str, cache_home: Path) -> None:
    """From a cold cache (the export runs in a child process) and then warm, as a worker loads it."""
    pytest.importorskip("openvino")
    if torch.cuda.is_available():
        pytest.skip("auto means torch where CUDA is")
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home), PYTHONPATH=root)
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _NO_TORCH, str(CKPT), runtime], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["ArraySegmenter", "False"]
    assert len(list((cache_home / "footprints" / "onnx").glob("*.onnx"))) == 1
