"""Shard sets on object storage (`s3://bucket/prefix`, or any fsspec URL) beside local folders.

    is_url("s3://b/p")                      # True: a path with a scheme goes through fsspec
    join("s3://b/p", "index.json")          # 's3://b/p/index.json' (local paths join as paths)
    upload(Path("x.tar"), "s3://b/p/x.tar") # the object appears only once it is complete
    with opened("s3://b/p/x.tar") as fh: ...  # a binary read handle, local or remote

Credentials and endpoint are the standard AWS ones, read by s3fs/botocore: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, ~/.aws), AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for an
S3-compatible store (MinIO, Ceph, a test server). No option of ours duplicates them.

Atomicity: S3 shows an object only when its upload is complete (a single PUT, or a multipart upload on its
completing call), so uploading a finished local file is the atomic write; nothing is ever written in place.
A missing object is a FileNotFoundError naming it; every other failure a StorageError naming the URL and what
is wrong (no such bucket, no credentials, no endpoint).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["StorageError", "download", "is_url", "join", "list_names", "list_sizes", "local_or_url", "opened",
           "read_bytes", "register_with_webdataset", "remove", "sha256", "size", "upload"]


class StorageError(ValueError):
    """Object storage refused or failed; the message names the URL and the reason."""


def is_url(path: str | Path) -> bool:
    # pathlib turns 's3://b/p' into 's3:/b/p', so a URL must stay a str from the command line on
    return "://" in str(path)


def local_or_url(path: str | Path) -> str | Path:
    """A URL as it is, anything else as a Path (what the command lines hand to the builders and readers)."""
    return str(path) if is_url(path) else Path(path)


def join(base: str | Path, name: str) -> str | Path:
    return f"{str(base).rstrip('/')}/{name}" if is_url(base) else Path(base) / name


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    with storage_errors(url):
        return fsspec.core.url_to_fs(url)


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (f"no credentials ({exc}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                "(AWS_ENDPOINT_URL for an S3-compatible store)")
    if name == "EndpointConnectionError" or isinstance(exc, (ConnectionError, TimeoutError)):
        return f"cannot reach the storage endpoint ({exc}); check AWS_ENDPOINT_URL"
    if isinstance(exc, PermissionError):
        return f"access denied ({exc})"
    return f"{name}: {exc}"


def _not_found(url: str, fs: Any, path: str) -> Exception:
    """FileNotFoundError for a missing object; a StorageError when the whole bucket is missing (a typo in it
    would otherwise read as 'no index.json')."""
    bucket = path.split("/", 1)[0]
    try:
        bucket_exists = fs.exists(bucket)
    except Exception:  # the question was only to word the message better
        bucket_exists = True
    if not bucket_exists:
        return StorageError(f"{url}: the bucket {bucket!r} does not exist")
    return FileNotFoundError(f"{url}: no such object")


@contextlib.contextmanager
def storage_errors(url: str, fs: Any = None, path: str = "") -> Iterator[None]:
    """Turn whatever the client library raises into one line naming `url`: FileNotFoundError for a missing
    object (given the `fs` and `path` to tell it from a missing bucket), StorageError for anything else."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise (_not_found(url, fs, path) if fs is not None else StorageError(f"{url}: {exc}")) from None
    except Exception as exc:  # botocore, aiohttp and fsspec raise many unrelated types
        raise StorageError(f"{url}: {_reason(exc)}") from None


def size(url: str | Path) -> int:
    """Bytes of a file or object."""
    if not is_url(url):
        return Path(url).stat().st_size
    fs, path = _fs(str(url))
    with storage_errors(str(url), fs, path):
        return int(fs.info(path)["size"])


def read_bytes(url: str | Path) -> bytes:
    if not is_url(url):
        return Path(url).read_bytes()
    fs, path = _fs(str(url))
    with storage_errors(str(url), fs, path):
        return fs.cat_file(path)


def opened(url: str | Path) -> IO[bytes]:
    """A binary read handle (a context manager) on a local file or an object."""
    if not is_url(url):
        return open(url, "rb")
    fs, path = _fs(str(url))
    with storage_errors(str(url), fs, path):
        return fs.open(path, "rb")


def sha256(url: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's or object's bytes, streamed."""
    digest = hashlib.sha256()
    with opened(url) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    if mode != "rb":
        raise ValueError(f"{url}: shards are only read through webdataset (mode {mode!r})")
    return opened(url)


def register_with_webdataset(schemes: tuple[str, ...] = ("s3",)) -> None:
    """webdataset opens `s3://` shard URLs through fsspec, in-process (its own way is `pipe:` to a CLI).
    Called at import by the modules that stream shards, so DataLoader workers have it too."""
    from webdataset.gopen import gopen_schemes  # the module (the package exports a function of that name)

    for scheme in schemes:
        gopen_schemes.setdefault(scheme, _gopen_fsspec)


def list_sizes(url: str) -> dict[str, int]:
    """{path relative to the prefix `url`: bytes} of every object under it (sorted); {} for an empty prefix.
    A missing bucket or missing credentials is a StorageError."""
    fs, root = _fs(url)
    with storage_errors(url, fs, root):  # a missing prefix lists as empty: a FileNotFoundError is the bucket
        fs.invalidate_cache()  # another process (an earlier build) may have written here
        found = fs.find(root, detail=True)
        return {p[len(root.rstrip("/")) + 1:]: int(found[p]["size"]) for p in sorted(found)}


def list_names(url: str) -> list[str]:
    """Paths of every object under the prefix `url`, relative to it (sorted); [] for an empty prefix."""
    return list(list_sizes(url))


def upload(local: Path, url: str) -> None:
    """Put a finished local file under `url`; readers see the old object or the whole new one."""
    fs, path = _fs(url)
    with storage_errors(url, fs, path):
        fs.put_file(str(local), path)


def download(url: str, local: Path) -> None:
    fs, path = _fs(url)
    with storage_errors(url, fs, path):
        fs.get_file(path, str(local))


def remove(url: str) -> None:
    fs, path = _fs(url)
    with storage_errors(url, fs, path):
        fs.rm_file(path)
