"""One storage layer for ``s3://`` URIs and local paths, built on ``pyarrow.fs``.

The S3 endpoint comes from the standard ``AWS_ENDPOINT_URL`` variable (set by the local stack to
its moto server, unset on AWS), so the same code path runs against moto, MinIO and AWS S3.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from medlm import paths


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem for the configured endpoint (``AWS_ENDPOINT_URL``) or AWS itself."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "http"
        kwargs["allow_bucket_creation"] = True
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``uri`` -> (filesystem, path inside it). ``s3://bucket/key`` or a local path."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    base = str(base)
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    """Create a local directory, or an S3 bucket (and nothing else: S3 has no directories)."""
    fs, path = resolve(uri)
    if is_s3(uri):
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            fs.create_dir(bucket)
    else:
        fs.create_dir(path, recursive=True)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    if not is_s3(uri):
        fs.create_dir(str(Path(path).parent), recursive=True)
    else:
        makedirs(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def list_files(uri: str, suffix: str = "") -> list[str]:
    """All files under ``uri`` (recursive), as URIs of the same kind, sorted."""
    fs, path = resolve(uri)
    info = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = sorted(i.path for i in info if i.type == pafs.FileType.File and i.path.endswith(suffix))
    return [f"s3://{p}" for p in files] if is_s3(uri) else files


def delete_files(uri: str, name_prefix: str = "") -> int:
    """Delete every file under the prefix ``uri`` (recursive) whose base name starts with ``name_prefix``,
    e.g. a dataset's shards before it is written again; nothing when ``uri`` does not exist. Returns the
    count."""
    if not exists(uri):
        return 0
    fs, _ = resolve(uri)
    files = [f for f in list_files(uri) if f.rsplit("/", 1)[-1].startswith(name_prefix)]
    for f in files:
        fs.delete_file(f[len("s3://") :] if is_s3(f) else f)
    return len(files)


def copy_tree(src: str, dst: str) -> None:
    """Copy a directory tree between any two of local / S3."""
    sfs, spath = resolve(src)
    dfs, dpath = resolve(dst)
    if is_s3(dst):
        makedirs(dst)
    else:
        Path(dpath).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(spath, dpath, source_filesystem=sfs, destination_filesystem=dfs)


def file_listing(uri: str, exclude: tuple[str, ...] = ()) -> list[tuple[str, int, str]]:
    """(path, size, mtime) of every file under ``uri`` but those whose base name matches an ``exclude``
    pattern, sorted; FileNotFoundError when nothing is stored there."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    if not infos:
        raise FileNotFoundError(f"nothing stored under {uri}")
    return sorted(
        (i.path, i.size, str(i.mtime))
        for i in infos
        if i.type == pafs.FileType.File and not any(fnmatch.fnmatch(i.base_name, p) for p in exclude)
    )


def version(uri: str, exclude: tuple[str, ...] = (), files: list[str] | None = None) -> str:
    """A short hash of ``uri`` and its :func:`file_listing` (only ``files``, URIs under it, where given):
    changes when anything under it is rewritten."""
    listing = file_listing(uri, exclude)
    if files is not None:
        keep = {resolve(f)[1] for f in files}
        listing = [x for x in listing if x[0] in keep]
    return _digest(uri, listing)


def _digest(uri: str, listing: list) -> str:
    import hashlib

    return hashlib.sha1(repr((uri, listing)).encode()).hexdigest()[:16]


def local_copy(uri: str, cache_dir: str | os.PathLike | None = None, exclude: tuple[str, ...] = ()) -> str:
    """A local directory holding ``uri``'s tree: the path itself when local, else a downloaded copy.

    ``exclude``: file names (fnmatch patterns on the base name) not to download, e.g. the shard of a model
    part a replica does not run."""
    if not is_s3(uri):
        return str(Path(uri).expanduser().resolve())
    fs, path = resolve(uri)
    listing = file_listing(uri, exclude)
    # The cache key covers the content's listing (names, sizes, mtimes): a rewritten URI is fetched again.
    key = _digest(uri, listing)
    root = Path(cache_dir or paths.download_cache())
    dest = root / key
    if not (dest / ".complete").exists():
        if exclude:
            for name, _, _ in listing:  # only the files kept
                target = dest / Path(name).relative_to(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(
                    name, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
                )
        else:
            copy_tree(uri, str(dest))
        (dest / ".complete").touch()
    return str(dest)
