"""Every shipped YAML config loads, and bad configs are one-line ConfigErrors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT, PipelineConfig, load_config
from pipeline.core.errors import ConfigError, InputNotFoundError

PIPELINE_CONFIGS = sorted(p for p in (REPO_ROOT / "configs").glob("*.yaml") if p.name != "dataset.yaml")


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    """Every pipeline config validates (configs/dataset.yaml is a DATASET.yaml: test_dataset.py)."""
    assert isinstance(load_config(path), PipelineConfig)


def test_default_yaml_equals_the_defaults() -> None:
    assert load_config(REPO_ROOT / "configs" / "default.yaml") == PipelineConfig()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("tiling: {overlap: 400}\n", "tiling.overlap"),
        ("tiling: {tile_sise: 512}\n", "tiling.tile_sise"),
        ("model: {output_stride: 32}\n", "model.output_stride"),
        ("[1, 2]\n", "top level"),
    ],
)
def test_bad_config_is_a_one_line_config_error(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and where in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        load_config(tmp_path / "nope.yaml")


def test_default_checkpoint_is_the_named_file_not_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another checkpoint in models/ (an option, however recent its mtime) never becomes the default."""
    import os

    from pipeline import config

    monkeypatch.setattr(config, "MODELS_DIR", tmp_path)
    assert config.default_checkpoint() is None
    default = tmp_path / config.DEFAULT_MODEL
    default.write_bytes(b"d")
    option = tmp_path / "deeplabv3-lite0-buildings-os16.safetensors"
    option.write_bytes(b"o")
    os.utime(default, (1_000_000, 1_000_000))  # the option is newer
    assert config.default_checkpoint() == default
