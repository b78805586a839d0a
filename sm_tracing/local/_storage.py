"""Where the local runtime reads inputs and writes outputs: ``file://`` and ``s3://`` locations
mapped onto local folders, and writes a reader never sees half done."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname


@dataclass(frozen=True)
class Location:
    """A folder, as the URI a caller is told and the local path that stands for it."""

    uri: str
    path: Path

    def child(self, *names: str) -> tuple[str, Path]:
        return "/".join((self.uri, *names)), self.path.joinpath(*names)


def local_path(uri: str, s3_root: Path | None) -> Path:
    """The local file standing for a ``file://`` URI, or an ``s3://bucket/key`` URI under
    ``<s3_root>/bucket/key``; ValueError for anything else."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} names a remote host")
        return Path(url2pathname(parts.path))
    if parts.scheme == "s3":
        if s3_root is None:
            raise ValueError(f"{uri!r} needs LocalRuntime(s3_root=...) to map s3:// locally")
        bucket = parts.netloc
        path = (s3_root / bucket / parts.path.lstrip("/")).resolve()
        if not safe_name(bucket) or not path.is_relative_to(s3_root / bucket):
            raise ValueError(f"{uri!r} is not a valid S3 location")
        return path
    raise ValueError(f"unsupported location {uri!r}: expected file:// or s3://")


def location(where: str | os.PathLike[str], s3_root: Path | None) -> Location:
    """*where* (a ``file://`` or ``s3://`` URI, or a folder) as a :class:`Location`."""
    text = os.fspath(where)
    if "://" in text:
        return Location(text.rstrip("/"), local_path(text, s3_root))
    path = Path(text).resolve()
    return Location(path.as_uri(), path)


def write(path: Path, data: bytes) -> None:
    """Write *data* to *path*, creating its folder."""
    # Written aside and renamed, so a caller polling for the file never reads half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


def safe_name(name: str) -> bool:
    """Whether *name* is one path component that stays inside its folder."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
