"""Where scenes come from and outputs go: local paths, ``file://`` and ``s3://`` URLs.

Rasters are always read by GDAL, so an ``s3://bucket/key`` input becomes
``/vsis3/bucket/key``: windowed HTTP range reads, never a download. Everything else
(listing a bucket, manifests, tile caches, publishing outputs) goes through fsspec,
with s3fs for S3.

Credentials and the endpoint come from the standard AWS environment variables and
config files (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``). botocore reads them
itself; :func:`configure_gdal_s3` translates the endpoint into GDAL's own options.
No URL or message built here ever contains a credential, and :func:`redact` scrubs
any that a third-party error message might carry.

S3 has no rename, but an object only becomes visible once its PUT (or multipart
upload) has completed, so uploading each finished file straight to its final key is
atomic: readers see the whole object or nothing. ``run.json`` is uploaded last, so
its presence means the scene's outputs are complete.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec

from pipeline.core.digest import file_sha256
from pipeline.core.errors import InputNotFoundError, NotARasterError, OutputError, StorageError

SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed storage location: ``scheme`` is ``file`` or ``s3``.

    ``path`` is an absolute local path for ``file``, ``bucket/key`` for ``s3``.
    """

    scheme: str
    path: str

    @property
    def url(self) -> str:
        return self.path if self.scheme == "file" else f"s3://{self.path}"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def child(self, *parts: str) -> Location:
        return Location(self.scheme, "/".join([self.path.rstrip("/"), *parts]))

    @property
    def gdal_path(self) -> str:
        """What GDAL opens: the local path, or ``/vsis3/bucket/key``."""
        return self.path if self.is_local else f"/vsis3/{self.path}"


def parse_location(url: str | os.PathLike[str]) -> Location:
    """A local path, ``file://`` URL or ``s3://bucket/key`` as a :class:`Location`."""
    text = os.fspath(url)
    parts = urlsplit(text)
    if parts.scheme in ("", "file") or len(parts.scheme) == 1:  # a Windows drive letter is a path
        local = parts.path if parts.scheme == "file" else text
        return Location("file", os.path.abspath(os.path.expanduser(local)))
    if parts.scheme in ("s3", "s3a"):
        if not parts.netloc:
            raise StorageError(f"{text}: no bucket in the URL; write s3://BUCKET/PREFIX")
        if "@" in parts.netloc:
            raise StorageError(
                f"{redact(text)}: credentials in the URL are not accepted; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
        return Location("s3", f"{parts.netloc}/{_s3_key(text, parts.path)}".rstrip("/"))
    raise StorageError(
        f"{text}: unsupported URL scheme '{parts.scheme}://'; use a local path, file:// or s3://"
    )


def _s3_key(url: str, path: str) -> str:
    """The object key of ``path`` with ``.`` and ``..`` segments resolved (as a file path would be).

    S3 keys are literal strings: ``s3://b/out/../x`` would otherwise be written under a key
    that contains ``..``. A key that climbs above the bucket is refused.
    """
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise StorageError(
                    f"{redact(url)}: the key climbs above the bucket with '..'; "
                    "write the key without '..', e.g. s3://BUCKET/PREFIX"
                )
            parts.pop()
            continue
        parts.append(segment)
    return "/".join(parts)


def gdal_path(url: str | os.PathLike[str]) -> str:
    """The path GDAL should open for ``url`` (``/vsi*`` paths pass through unchanged)."""
    text = os.fspath(url)
    if text.startswith("/vsi"):
        return text
    location = parse_location(text)
    if not location.is_local:
        configure_gdal_s3()
    return location.gdal_path


def endpoint_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint from the standard AWS variables, or None for AWS itself."""
    env = os.environ if environ is None else environ
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def gdal_s3_options(environ: dict[str, str] | None = None) -> dict[str, str]:
    """GDAL's ``/vsis3/`` options for a custom endpoint (MinIO, moto, Ceph ...).

    GDAL takes the host without scheme (``AWS_S3_ENDPOINT``), plain HTTP as
    ``AWS_HTTPS=NO`` and, for such servers, path-style addressing.
    """
    url = endpoint_url(environ)
    if not url:
        return {}
    parts = urlsplit(url)
    return {
        "AWS_S3_ENDPOINT": parts.netloc or parts.path,
        "AWS_HTTPS": "NO" if parts.scheme == "http" else "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


_CONFIGURED: dict[str, str] = {}


def configure_gdal_s3() -> None:
    """Export :func:`gdal_s3_options` to the environment, where GDAL reads them.

    Settings made explicitly in the environment win; ones this function made earlier
    follow a changed ``AWS_ENDPOINT_URL``. Every process that imports :mod:`pipeline`
    runs it, Dask workers included, and so does every S3 path handed to GDAL.
    """
    for key, value in {**GDAL_S3_DEFAULTS, **gdal_s3_options()}.items():
        current = os.environ.get(key)
        if current is None or current == _CONFIGURED.get(key):
            os.environ[key] = value
            _CONFIGURED[key] = value


#: Opening ``/vsis3/…/scene.tif`` need not list the prefix looking for sidecar files.
GDAL_S3_DEFAULTS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}

#: Local files may keep their georeference in a sidecar (``.aux.xml``, ``.tfw``): GDAL finds
#: those only when it lists the folder, which :data:`GDAL_S3_DEFAULTS` turns off for S3.
LOCAL_SIDECARS = {"GDAL_DISABLE_READDIR_ON_OPEN": "FALSE"}


def redact(text: str) -> str:
    """``text`` with credential values and URL user-info replaced by ``***``."""
    out = _USERINFO.sub(r"\g<scheme>***@", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, "***")
    return out


def filesystem(location: Location) -> Any:
    """The fsspec filesystem for ``location`` (s3fs honours the AWS variables)."""
    if location.is_local:
        return fsspec.filesystem("file")
    # no listings cache: Dask workers and Prefect workers live long, and buckets change
    options: dict[str, Any] = {"use_listings_cache": False}
    if url := endpoint_url():
        options["client_kwargs"] = {"endpoint_url": url}
    return fsspec.filesystem("s3", **options)


def _storage_error(location: Location, action: str, exc: BaseException) -> StorageError:
    return StorageError(
        f"{location.url}: cannot {action} ({redact(str(exc)) or type(exc).__name__}); check the URL, "
        "that the bucket exists and that the AWS credentials allow it"
    )


def list_scenes(input_url: str, *, pattern: str = "*.tif") -> list[Location]:
    """Scenes directly under ``input_url`` whose file name matches ``pattern``, sorted."""
    root = parse_location(input_url)
    fs = filesystem(root)
    try:
        found = fs.exists(root.path)
        entries = fs.ls(root.path, detail=True) if found else []
    except Exception as exc:
        raise _storage_error(root, "list scenes", exc) from exc
    if not found:
        raise InputNotFoundError(
            f"{root.url}: no such folder or prefix; check input_url (scenes are listed under it)"
        )
    names = sorted(
        str(e["name"]) for e in entries
        if e.get("type") != "directory" and fnmatch.fnmatch(str(e["name"]).rsplit("/", 1)[-1], pattern)
    )  # fmt: skip
    return [Location(root.scheme, name if root.is_local else name.lstrip("/")) for name in names]


def inspect_input(location: Location) -> tuple[dict[str, Any], str]:
    """What identifies an input's content, and its last-modified time, from one lookup.

    The identity is the SHA-256 and size of a local file, or the ETag and size of an S3
    object (one metadata request). The time, ISO 8601 UTC (``SOURCE_DATE_EPOCH`` wins
    when set), is the date stamped into GeoPackages, so that outputs depend on the inputs
    only and an interrupted-then-resumed run writes the same bytes as an uninterrupted one.
    """
    if location.is_local:
        ident, modified = _local_identity(location.path)
    else:
        info = _object_info(location)
        ident = {"etag": str(info.get("ETag", "")).strip('"'), "size": int(info.get("size", 0))}
        value = info.get("LastModified") or info.get("last_modified")
        modified = value if isinstance(value, datetime) else datetime.fromtimestamp(0, UTC)
    if epoch := os.environ.get("SOURCE_DATE_EPOCH"):
        modified = datetime.fromtimestamp(int(epoch), UTC)
    return ident, modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def identity(location: Location) -> dict[str, Any]:
    """What identifies an input's content (see :func:`inspect_input`)."""
    return inspect_input(location)[0]


def _local_identity(path: str) -> tuple[dict[str, Any], datetime]:
    if not os.path.exists(path):
        raise InputNotFoundError(f"{path}: file not found; check the path")
    if os.path.isdir(path):
        raise NotARasterError(
            f"{path}: is a folder, not a raster; pass one scene file (the segment-bucket flow takes folders)"
        )
    stat = os.stat(path)
    return {"sha256": file_sha256(path), "size": stat.st_size}, datetime.fromtimestamp(stat.st_mtime, UTC)


def _object_info(location: Location) -> dict[str, Any]:
    try:
        info: dict[str, Any] = filesystem(location).info(location.path)
    except FileNotFoundError as exc:
        raise InputNotFoundError(
            f"{location.url}: object not found; check the URL and the bucket listing"
        ) from exc
    except Exception as exc:
        raise _storage_error(location, "read the object's metadata", exc) from exc
    return info


def read_json(location: Location) -> dict[str, Any] | None:
    """A JSON object stored at ``location``, or None when there is none."""
    fs = filesystem(location)
    try:
        with fs.open(location.path, "rb") as f:
            data = json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file where a folder would be)
        return None
    except json.JSONDecodeError:
        return None  # a manifest is only ever replaced whole; garbage means someone else wrote it
    except Exception as exc:
        raise _storage_error(location, "read", exc) from exc
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _write_errors(location: Location, action: str) -> Iterator[None]:
    """Turn write failures into an OutputError (local) or a StorageError (S3)."""
    try:
        yield
    except OSError as exc:
        if location.is_local:
            raise OutputError(f"{location.path}: cannot {action} ({exc}); choose a writable path") from exc
        raise _storage_error(location, action, exc) from exc
    except Exception as exc:
        raise _storage_error(location, action, exc) from exc


def write_bytes_atomic(location: Location, payload: bytes) -> None:
    """Write ``payload`` so that readers see the old object, or the whole new one."""
    with _write_errors(location, "write"):
        if location.is_local:
            target = Path(location.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                os.fchmod(fd, FILE_MODE)
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        filesystem(location).pipe_file(location.path, payload)  # one PUT: all or nothing


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of files written here (as ``open`` would create them). The umask is read once, at
#: import: reading it means setting it, and Dask worker threads write tiles concurrently.
FILE_MODE = 0o666 & ~_read_umask()


def write_json(location: Location | str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically (see :func:`write_bytes_atomic`)."""
    target = location if isinstance(location, Location) else parse_location(location)
    text = json.dumps(payload, indent=2, default=str) + "\n"
    write_bytes_atomic(target, text.encode())


def read_bytes(location: Location) -> bytes | None:
    fs = filesystem(location)
    try:
        data: bytes = fs.cat_file(location.path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception as exc:
        raise _storage_error(location, "read", exc) from exc
    return data


def stat(location: Location) -> dict[str, Any] | None:
    """fsspec's info of a file or object (``size``; ``ETag`` on S3), or None when there is none."""
    try:
        info: dict[str, Any] = filesystem(location).info(location.path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise _storage_error(location, "look it up", exc) from exc
    return info


def remove_tree(location: Location) -> None:
    """Delete a folder or prefix and everything under it (missing is fine)."""
    fs = filesystem(location)
    try:
        if fs.exists(location.path):
            fs.rm(location.path, recursive=True)
    except FileNotFoundError:
        return
    except Exception as exc:
        raise _storage_error(location, "delete", exc) from exc


def remove_file(location: Location) -> None:
    """Delete one file or object (missing is fine)."""
    try:
        if location.is_local:
            Path(location.path).unlink(missing_ok=True)
            return
        fs = filesystem(location)
        if fs.exists(location.path):
            fs.rm(location.path)
    except FileNotFoundError:
        return
    except Exception as exc:
        raise _storage_error(location, "delete", exc) from exc


def upload(local: Path, target: Location) -> None:
    """Copy a finished local file to ``target``: a local rename, or one S3 upload."""
    with _write_errors(target, "write"):
        if target.is_local:
            Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, target.path)
            return
        filesystem(target).put_file(str(local), target.path)
