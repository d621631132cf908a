"""The Dask dashboard: served (bokeh) when asked for, absent (and no port warning) otherwise."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.run.cluster import connect
from tests.conftest import coordinate_image, write_tif

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_the_dashboard_is_served_when_asked_for() -> None:
    import bokeh  # pinned: without it Dask serves no dashboard

    assert bokeh.__version__
    with connect(scheduler=None, dashboard="127.0.0.1:0") as client:
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        with urllib.request.urlopen(link, timeout=30) as page:  # loopback only
            assert page.status == 200 and b"bokeh" in page.read().lower()


def test_ordinary_runs_leave_port_8787_alone_and_warn_nothing() -> None:
    """8787 taken by someone else: an ordinary run neither tries it nor warns about it."""
    import logging
    import socket

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("distributed")
    logger.addHandler(handler)
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 8787))
            busy.listen()
        except OSError:
            pass  # already taken: all the better for this test
        try:
            with connect(scheduler=None) as client:
                port = client.scheduler_info().get("services", {}).get("dashboard")
                assert port != 8787
        finally:
            logger.removeHandler(handler)
    assert not [r for r in records if r.levelno >= logging.WARNING and "8787" in r.getMessage()]


def test_segment_prints_the_dashboard_address_and_ordinary_runs_no_port_warning(tmp_path: Path) -> None:
    src = write_tif(tmp_path / "s.tif", coordinate_image(128, 128))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tiling: {tile_size: 128, overlap: 16}\ndask: {dashboard: '127.0.0.1:0'}\n")
    shown = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "a"), "--config", str(cfg),
                                "--dashboard"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "dashboard: http://127.0.0.1:" in shown.output
    plain = tmp_path / "plain.yaml"
    plain.write_text("tiling: {tile_size: 128, overlap: 16}\n")
    quiet = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "b"), "--config", str(plain)])
    assert quiet.exit_code == 0, quiet.output
    assert "8787" not in quiet.output and "dashboard" not in quiet.output and "report: " in quiet.output
