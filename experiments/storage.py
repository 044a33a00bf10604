"""Artifact storage behind Django's storage API (the ``artifacts`` alias of ``STORAGES``).

Two backends with the same small extension of the Storage API, so services never look at which
one is configured:

- ``LocalArtifactStorage`` (default, zero set-up): a directory, ``ARTIFACT_ROOT``.
- ``S3ArtifactStorage``: any S3-compatible store (AWS, MinIO, ...) through django-storages/boto3.

The extension is what the MLflow artifact proxy needs and plain ``Storage.save`` cannot give:
streamed writes with a byte limit (never a whole file in memory), streamed reads, and multipart
uploads (a real S3 multipart upload; on disk, parts assembled into the final file). Keys are
already validated and team-scoped by services.artifacts; backends still refuse anything that
resolves outside their root (symlinks included).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any, Protocol

from boto3.s3.transfer import TransferConfig
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage, storages
from storages.backends.s3 import S3Storage

CHUNK_SIZE = 1024 * 1024
# Local multipart uploads live here, outside every team's key space (keys start with "teams/").
UPLOADS_DIR = ".uploads"
STALE_UPLOAD_SECONDS = 24 * 3600


class StreamError(Exception):
    """The incoming stream was refused while it was read; nothing was stored."""


class TooLarge(StreamError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class Truncated(StreamError):
    """The client sent fewer bytes than it announced (a dropped connection)."""


def limited(chunks: Iterable[bytes], limit: int | None) -> Iterator[bytes]:
    """Pass chunks through, raising TooLarge as soon as more than `limit` bytes went by."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if limit is not None and total > limit:
            raise TooLarge(limit)
        yield chunk


class ArtifactStorage(Protocol):
    """What services.artifacts uses; both backends below implement it."""

    def save_stream(self, name: str, chunks: Iterable[bytes], *, limit: int | None) -> int: ...
    def open_stream(self, name: str) -> IO[bytes]: ...
    def is_dir(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def delete(self, name: str) -> None: ...
    def mpu_create(self, name: str) -> str: ...
    def mpu_put_part(self, name: str, upload_id: str, part_number: int, chunks: Iterable[bytes]) -> str: ...
    def mpu_complete(self, name: str, upload_id: str, parts: list[tuple[int, str]]) -> int: ...
    def mpu_abort(self, name: str, upload_id: str) -> None: ...


class _ChunkFile:
    """A read()-able view of a chunk iterator, for APIs that pull (boto3's upload_fileobj)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        self.size += len(data)
        return data

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        pass


class LocalArtifactStorage(FileSystemStorage):
    """A directory tree. Writes go to a temporary file then os.replace, so a reader never sees a
    half-written file and a refused (too large, broken) upload leaves nothing behind."""

    def __init__(self, location: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("allow_overwrite", True)
        super().__init__(location=location, **kwargs)

    def path(self, name: str) -> str:
        full = super().path(name)  # safe_join: refuses ../ and absolute names
        # A symlink anywhere on the way (to another team's directory, to /etc) is refused: the
        # resolved path must stay inside the team's own directory (teams/<id>), or the root.
        parts = name.split("/")
        jail = os.path.realpath(
            os.path.join(self.location, *parts[:2]) if parts[0] == "teams" and len(parts) > 2 else self.location
        )
        real = os.path.realpath(full)
        if real != jail and not real.startswith(jail + os.sep):
            raise SuspiciousFileOperation(f"The artifact path {name!r} resolves outside its team's directory.")
        return full

    def _uploads(self) -> str:
        path = os.path.join(self.location, UPLOADS_DIR)
        os.makedirs(path, exist_ok=True)
        return path

    def _write_temp(self, chunks: Iterable[bytes], directory: str, *, etag: bool = False) -> tuple[str, int, str]:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".part-")
        # Only multipart parts need an ETag; hashing every upload would cost CPU for nothing.
        md5 = hashlib.md5(usedforsecurity=False) if etag else None
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    if md5 is not None:
                        md5.update(chunk)
                    size += len(chunk)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return temp, size, md5.hexdigest() if md5 is not None else ""

    def _place(self, temp: str, name: str) -> None:
        target = self.path(name)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(target):
                raise SuspiciousFileOperation(f"{name!r} is a directory.")
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def save_stream(self, name: str, chunks: Iterable[bytes], *, limit: int | None) -> int:
        self.path(name)  # refuse before reading anything
        temp, size, _ = self._write_temp(limited(chunks, limit), self._uploads())
        self._place(temp, name)
        return size

    def open_stream(self, name: str) -> IO[bytes]:
        # A real file object: gunicorn's wsgi.file_wrapper sends it with sendfile().
        return open(self.path(name), "rb")  # closed by the response

    def is_dir(self, name: str) -> bool:
        return os.path.isdir(self.path(name))

    def delete(self, name: str) -> None:
        super().delete(name)
        # Drop directories left empty, up to the root, so listings do not show ghosts.
        directory = os.path.dirname(self.path(name))
        root = os.path.realpath(self.location)
        while os.path.realpath(directory).startswith(root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    # --- Multipart: parts are files under .uploads/<id>/, concatenated on completion ---------

    def _upload_dir(self, upload_id: str) -> str:
        if not upload_id or not upload_id.isalnum():
            raise SuspiciousFileOperation("Invalid upload id.")
        return os.path.join(self._uploads(), upload_id)

    def mpu_create(self, name: str) -> str:
        self.path(name)
        self._prune_stale_uploads()
        upload_id = uuid.uuid4().hex
        os.makedirs(self._upload_dir(upload_id))
        return upload_id

    def _prune_stale_uploads(self) -> None:
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        with os.scandir(self._uploads()) as entries:
            for entry in entries:
                if entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)

    def mpu_put_part(self, name: str, upload_id: str, part_number: int, chunks: Iterable[bytes]) -> str:
        directory = self._upload_dir(upload_id)
        if not os.path.isdir(directory):
            raise FileNotFoundError(upload_id)
        temp, _, etag = self._write_temp(chunks, directory, etag=True)
        os.replace(temp, os.path.join(directory, f"{part_number:05d}"))
        return etag

    def mpu_complete(self, name: str, upload_id: str, parts: list[tuple[int, str]]) -> int:
        directory = self._upload_dir(upload_id)
        if not os.path.isdir(directory):
            raise FileNotFoundError(upload_id)
        files = [os.path.join(directory, f"{number:05d}") for number, _ in sorted(parts)]
        missing = [path for path in files if not os.path.exists(path)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} part(s) were never uploaded")
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".whole-")
        with os.fdopen(fd, "wb") as out:
            for path in files:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out, CHUNK_SIZE)
            size = out.tell()
        self._place(temp, name)
        shutil.rmtree(directory, ignore_errors=True)
        return size

    def mpu_abort(self, name: str, upload_id: str) -> None:
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)


class S3ArtifactStorage(S3Storage):
    """S3-compatible object storage. Uploads stream through boto3's managed transfer (bounded
    buffers); multipart uploads are S3 multipart uploads whose parts mlboard proxies, so clients
    never need to reach the bucket."""

    def __init__(self, **settings: Any) -> None:
        # A few 8 MB buffers at most per transfer: the web worker's memory stays flat.
        settings.setdefault("transfer_config", TransferConfig(multipart_chunksize=8 * 1024 * 1024, max_concurrency=4))
        settings.setdefault("file_overwrite", True)
        super().__init__(**settings)

    @property
    def _client(self) -> Any:
        return self.connection.meta.client

    def _key(self, name: str) -> str:
        return self._normalize_name(name)

    def save_stream(self, name: str, chunks: Iterable[bytes], *, limit: int | None) -> int:
        source = _ChunkFile(limited(chunks, limit))
        try:
            self._client.upload_fileobj(
                source,
                self.bucket_name,
                self._key(name),
                ExtraArgs=self._write_args(name),
                Config=self.transfer_config,
            )
        except StreamError:
            raise
        except Exception as exc:
            # s3transfer wraps errors raised while reading the source; unwrap ours.
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, StreamError):
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, StreamError):
                raise cause from None
            raise
        return source.size

    def _write_args(self, name: str) -> dict[str, Any]:
        import mimetypes

        return {"ContentType": mimetypes.guess_type(name)[0] or "application/octet-stream"}

    def open_stream(self, name: str) -> IO[bytes]:
        try:
            body = self._client.get_object(Bucket=self.bucket_name, Key=self._key(name))["Body"]
        except self._client.exceptions.NoSuchKey:
            raise FileNotFoundError(name) from None
        return body  # botocore StreamingBody: read(n) pulls from the socket

    def is_dir(self, name: str) -> bool:
        prefix = self._key(name).rstrip("/") + "/"
        found = self._client.list_objects_v2(Bucket=self.bucket_name, Prefix=prefix, MaxKeys=1)
        return bool(found.get("KeyCount"))

    def mpu_create(self, name: str) -> str:
        created = self._client.create_multipart_upload(
            Bucket=self.bucket_name, Key=self._key(name), **self._write_args(name)
        )
        return created["UploadId"]

    def mpu_put_part(self, name: str, upload_id: str, part_number: int, chunks: Iterable[bytes]) -> str:
        # S3 needs the part's length up front: spool it (to disk past 1 MB), then send it.
        with tempfile.SpooledTemporaryFile(max_size=CHUNK_SIZE) as spool:
            for chunk in chunks:
                spool.write(chunk)
            size = spool.tell()
            spool.seek(0)
            done = self._client.upload_part(
                Bucket=self.bucket_name,
                Key=self._key(name),
                UploadId=upload_id,
                PartNumber=part_number,
                Body=spool,
                ContentLength=size,
            )
        return done["ETag"].strip('"')

    def mpu_complete(self, name: str, upload_id: str, parts: list[tuple[int, str]]) -> int:
        self._client.complete_multipart_upload(
            Bucket=self.bucket_name,
            Key=self._key(name),
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in sorted(parts)]},
        )
        return self.size(name)

    def mpu_abort(self, name: str, upload_id: str) -> None:
        with contextlib.suppress(self._client.exceptions.NoSuchUpload):
            self._client.abort_multipart_upload(Bucket=self.bucket_name, Key=self._key(name), UploadId=upload_id)


def artifact_storage() -> ArtifactStorage:
    return storages["artifacts"]  # type: ignore[return-value]
