"""Storage locations, GDAL's S3 options, redaction, listing and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.errors import (
    InputNotFoundError,
    RasterReadError,
    StorageError,
    TransientIOError,
    is_transient,
)
from pipeline.io.storage import (
    Location,
    configure_gdal_s3,
    gdal_path,
    gdal_s3_options,
    list_scenes,
    parse_location,
    read_json,
    redact,
    write_bytes_atomic,
    write_json,
)


@pytest.mark.parametrize(
    ("url", "scheme", "path"),
    [
        ("s3://bucket/scenes/a.tif", "s3", "bucket/scenes/a.tif"),
        ("s3://bucket/scenes/", "s3", "bucket/scenes"),
        ("s3://bucket", "s3", "bucket"),
        ("s3://bucket/runs/../out/./a//b/", "s3", "bucket/out/a/b"),
        ("file:///data/a.tif", "file", "/data/a.tif"),
        ("/data/a.tif", "file", "/data/a.tif"),
    ],
)
def test_parse_location(url: str, scheme: str, path: str) -> None:
    loc = parse_location(url)
    assert (loc.scheme, loc.path) == (scheme, path)


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_location("out/demo").path == str(tmp_path / "out" / "demo")


def test_locations_compose_and_map_to_gdal_paths() -> None:
    loc = parse_location("s3://imagery/scenes")
    child = loc.child("austin.tif")
    assert child.url == "s3://imagery/scenes/austin.tif"
    assert (child.name, child.stem) == ("austin.tif", "austin")
    assert child.gdal_path == "/vsis3/imagery/scenes/austin.tif"
    assert gdal_path("file:///x/y.tif") == "/x/y.tif"
    assert gdal_path("/vsicurl/https://h/x.tif") == "/vsicurl/https://h/x.tif"
    assert Location("file", "/a/b").child("c.tif").url == "/a/b/c.tif"


@pytest.mark.parametrize(
    ("url", "needle"),
    [("gs://bucket/x.tif", "unsupported URL scheme"), ("s3:///x.tif", "no bucket"),
     ("s3://AKIA:secret@bucket/x.tif", "credentials in the URL"),
     ("s3://bucket/a/../../x.tif", "climbs above the bucket")],
)  # fmt: skip
def test_bad_urls_are_rejected_clearly(url: str, needle: str) -> None:
    with pytest.raises(StorageError, match=needle) as info:
        parse_location(url)
    assert isinstance(info.value, OSError)
    assert "secret" not in str(info.value)


def test_gdal_s3_options_follow_the_aws_endpoint() -> None:
    assert gdal_s3_options({}) == {}
    opts = gdal_s3_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert opts == {"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    opts = gdal_s3_options({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://minio:9000"})
    assert opts["AWS_S3_ENDPOINT"] == "minio:9000" and opts["AWS_HTTPS"] == "YES"


def test_configure_gdal_s3_keeps_explicit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.io.storage as storage

    monkeypatch.setattr(storage, "_CONFIGURED", {})
    for key in ("AWS_S3_ENDPOINT", "AWS_VIRTUAL_HOSTING", "AWS_ENDPOINT_URL_S3", *storage.GDAL_S3_DEFAULTS):
        monkeypatch.setenv(key, "")  # records the original state, so the undo also removes
        monkeypatch.delenv(key)  # whatever configure_gdal_s3 sets
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_HTTPS", "YES")  # set by the user: must win
    configure_gdal_s3()
    assert os.environ["AWS_S3_ENDPOINT"] == "127.0.0.1:9999"
    assert os.environ["AWS_HTTPS"] == "YES"
    assert os.environ["AWS_VIRTUAL_HOSTING"] == "FALSE"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9998")  # ours follow the endpoint
    configure_gdal_s3()
    assert os.environ["AWS_S3_ENDPOINT"] == "127.0.0.1:9998"


def test_redact_removes_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    text = redact("failed: key AKIAEXAMPLE secret wJalrXUtnFEMI/K7MDENG at https://u:p@host/x")
    assert "AKIAEXAMPLE" not in text and "wJalrXUtnFEMI" not in text and "u:p@" not in text
    assert text.count("***") == 3


def test_list_scenes_matches_the_pattern_in_name_order(tmp_path: Path) -> None:
    for name in ("b.tif", "a.tif", "c.jpg", "d.TIF"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.tif").mkdir()  # folders are not scenes
    assert [s.name for s in list_scenes(str(tmp_path))] == ["a.tif", "b.tif"]
    assert [s.name for s in list_scenes(f"file://{tmp_path}", pattern="*.jpg")] == ["c.jpg"]
    with pytest.raises(InputNotFoundError, match="no such folder"):
        list_scenes(str(tmp_path / "missing"))


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    loc = parse_location(str(tmp_path / "state" / "m.json"))
    write_json(loc, {"a": 1})
    write_json(loc, {"a": 2})
    assert read_json(loc) == {"a": 2}
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["m.json"]
    assert oct((tmp_path / "state" / "m.json").stat().st_mode & 0o777) != oct(0o600)
    assert read_json(parse_location(str(tmp_path / "none.json"))) is None
    (tmp_path / "state" / "m.json").chmod(0o444)
    (tmp_path / "state").chmod(0o555)
    try:
        if os.geteuid() != 0:  # root ignores permissions
            with pytest.raises(OSError, match="cannot write"):
                write_bytes_atomic(loc, b"x")
    finally:
        (tmp_path / "state").chmod(0o755)


def test_identity_refuses_folders_and_missing_files(tmp_path: Path) -> None:
    from pipeline.core.errors import NotARasterError
    from pipeline.io.storage import identity

    with pytest.raises(NotARasterError, match="is a folder, not a raster"):
        identity(parse_location(str(tmp_path)))
    with pytest.raises(InputNotFoundError, match="file not found"):
        identity(parse_location(str(tmp_path / "none.tif")))
    (tmp_path / "a.tif").write_bytes(b"abc")
    got = identity(parse_location(str(tmp_path / "a.tif")))
    assert got == {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "size": 3}


def test_inspect_input_gives_identity_and_modified_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.io.storage import inspect_input

    scene = tmp_path / "a.tif"
    scene.write_bytes(b"abc")
    os.utime(scene, (0, 1_700_000_000))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ident, modified = inspect_input(parse_location(str(scene)))
    assert ident["size"] == 3 and modified == "2023-11-14T22:13:20.000Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert inspect_input(parse_location(str(scene))) == (ident, "1970-01-02T00:00:00.000Z")


def test_atomic_writes_get_the_mode_open_would_give(tmp_path: Path) -> None:
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    write_bytes_atomic(parse_location(str(tmp_path / "x.json")), b"{}")
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~mask


class EndpointConnectionError(Exception):  # named like botocore's
    pass


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError(), True),
        (TransientIOError("x"), True),
        (EndpointConnectionError("could not connect"), True),
        (RasterReadError("/vsis3/b/x.tif: HTTP response code: 503"), True),
        (RasterReadError("/vsis3/b/x.tif: HTTP response code: 403"), False),
        (InputNotFoundError("missing"), False),
        (ValueError("bad config"), False),
        (PermissionError("denied"), False),
    ],
)
def test_only_transient_io_errors_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_transient_cause_makes_the_wrapper_transient() -> None:
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise StorageError("s3://b/k: cannot read") from inner
    except StorageError as exc:
        assert is_transient(exc)
