"""Artifact storage behind Django's storage API (the ``artifacts`` alias of ``STORAGES``).

Two backends with the same small extension of the Storage API, so services never look at which
one is configured:

- ``LocalArtifactStorage`` (default, zero set-up): a directory, ``ARTIFACT_ROOT``.
- ``S3ArtifactStorage``: any S3-compatible store (AWS, MinIO, ...) through django-storages/boto3.

The extension is what the MLflow artifact proxy needs and plain ``Storage.save`` cannot give:
streamed writes with a byte limit (never a whole file in memory), streamed reads, and multipart
uploads (a real S3 multipart upload; on disk, parts written in place in the final file). Keys are
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
from collections.abc import Callable, Iterable, Iterator
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


# Called with the size once every byte is stored and just before the file becomes visible at its
# name; raising refuses the upload (nothing is placed).
BeforePlace = Callable[[int], None]


class ArtifactStorage(Protocol):
    """What services.artifacts uses; both backends below implement it."""

    # True when before_place runs before anything is visible at the name (a staged write).
    stages_writes: bool

    def save_stream(
        self, name: str, chunks: Iterable[bytes], *, limit: int | None, before_place: BeforePlace | None = None
    ) -> int: ...
    def open_stream(self, name: str) -> IO[bytes]: ...
    def is_dir(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def delete(self, name: str) -> None: ...
    def mpu_create(self, name: str) -> str: ...
    def mpu_put_part(
        self, name: str, upload_id: str, part_number: int, chunks: Iterable[bytes], *,
        num_parts: int | None = None, length: int | None = None,
    ) -> str: ...
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

    stages_writes = True

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

    def _place(self, temp: str, name: str, before_place: BeforePlace | None = None, size: int = 0) -> None:
        target = self.path(name)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(target):
                raise SuspiciousFileOperation(f"{name!r} is a directory.")
            if before_place is not None:
                before_place(size)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def save_stream(
        self, name: str, chunks: Iterable[bytes], *, limit: int | None, before_place: BeforePlace | None = None
    ) -> int:
        self.path(name)  # refuse before reading anything
        temp, size, _ = self._write_temp(limited(chunks, limit), self._uploads())
        self._place(temp, name, before_place, size)
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

    # --- Multipart: parts written straight into place in one file, moved in on completion -----
    #
    # .uploads/<id>/data is the file being assembled. MLflow's client cuts a file into parts of one
    # size (the last one shorter), so part n of an upload with parts of size S starts at (n-1)*S;
    # the first part that knows S (Content-Length of a part that is not the last) publishes it in
    # "part-size", and every part that matches goes into data at its offset: each byte is written
    # once, and completion is a truncate and a rename. A part that cannot be placed (another size,
    # no Content-Length, the last part before S is known) is kept whole as <n>.part and copied in by
    # the kernel (copy_file_range) on completion. Per-part markers <n> ("offset size etag", offset -1
    # for a kept part) are written once the part's bytes are, so completion sees only whole parts.

    def _upload_dir(self, upload_id: str) -> str:
        if not upload_id or not upload_id.isalnum():
            raise SuspiciousFileOperation("Invalid upload id.")
        return os.path.join(self._uploads(), upload_id)

    def mpu_create(self, name: str) -> str:
        self.path(name)
        self._prune_stale_uploads()
        upload_id = uuid.uuid4().hex
        directory = self._upload_dir(upload_id)
        os.makedirs(directory)
        os.close(os.open(os.path.join(directory, "data"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return upload_id

    def _prune_stale_uploads(self) -> None:
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        with os.scandir(self._uploads()) as entries:
            for entry in entries:
                if entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)

    @staticmethod
    def _part_size(directory: str, offer: int | None) -> int | None:
        """The upload's part size: the one already published, else `offer` (published atomically by
        link(), so two first parts racing agree on one value)."""
        published = os.path.join(directory, "part-size")
        if offer is not None and not os.path.exists(published):
            fd, temp = tempfile.mkstemp(dir=directory, prefix=".size-")
            try:
                os.write(fd, str(offer).encode())
                os.close(fd)
                with contextlib.suppress(FileExistsError):
                    os.link(temp, published)
            finally:
                os.unlink(temp)
        try:
            with open(published, "rb") as f:
                return int(f.read())
        except FileNotFoundError:
            return None

    def mpu_put_part(
        self,
        name: str,
        upload_id: str,
        part_number: int,
        chunks: Iterable[bytes],
        *,
        num_parts: int | None = None,
        length: int | None = None,
    ) -> str:
        directory = self._upload_dir(upload_id)
        if not os.path.isdir(directory):
            raise FileNotFoundError(upload_id)
        offset = -1
        if num_parts is not None and length is not None and 1 <= part_number <= num_parts:
            last = part_number == num_parts
            size = self._part_size(directory, None if last else length)
            if part_number == 1 and last:
                offset = 0
            elif size is not None and (length == size or (last and length <= size)):
                offset = (part_number - 1) * size
        if offset >= 0:
            etag, written = self._write_at(os.path.join(directory, "data"), offset, chunks)
        else:
            temp, written, etag = self._write_temp(chunks, directory, etag=True)
            os.replace(temp, os.path.join(directory, f"{part_number:05d}.part"))
        marker_fd, marker = tempfile.mkstemp(dir=directory, prefix=".marker-")
        with os.fdopen(marker_fd, "w") as out:
            out.write(f"{offset} {written} {etag}")
        os.replace(marker, os.path.join(directory, f"{part_number:05d}"))
        return etag

    @staticmethod
    def _write_at(path: str, offset: int, chunks: Iterable[bytes]) -> tuple[str, int]:
        fd = os.open(path, os.O_WRONLY)  # gone once the upload is completed or aborted
        md5 = hashlib.md5(usedforsecurity=False)
        written = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    done = os.pwrite(fd, view, offset + written)
                    md5.update(view[:done])
                    written += done
                    view = view[done:]
        finally:
            os.close(fd)
        return md5.hexdigest(), written

    def mpu_complete(self, name: str, upload_id: str, parts: list[tuple[int, str]]) -> int:
        directory = self._upload_dir(upload_id)
        if not os.path.isdir(directory):
            raise FileNotFoundError(upload_id)
        placed: list[tuple[int, int, int]] = []  # (part number, offset in data or -1, size)
        numbers = [number for number, _ in parts]
        if len(set(numbers)) != len(numbers):
            raise FileNotFoundError("a part is listed twice")
        for number, etag in sorted(parts):
            try:
                with open(os.path.join(directory, f"{number:05d}")) as marker:
                    offset, size, stored = marker.read().split()
            except FileNotFoundError:
                raise FileNotFoundError(f"part {number} was never uploaded") from None
            if etag and etag != stored:
                raise FileNotFoundError(f"part {number} does not match its ETag")
            placed.append((number, int(offset), int(size)))
        data = os.path.join(directory, "data")
        # Where each part belongs in the whole file; parts already there stay where they are.
        targets, position = [], 0
        for _, _offset, size in placed:
            targets.append(position)
            position += size
        in_place = all(offset in (-1, target) for (_, offset, _), target in zip(placed, targets, strict=True))
        if in_place:
            whole = data
        else:  # parts that did not follow one size: assemble a new file from where each one is
            fd, whole = tempfile.mkstemp(dir=directory, prefix=".whole-")
            os.close(fd)
        with open(whole, "r+b") as out, open(data, "rb") as source:
            for (number, offset, size), target in zip(placed, targets, strict=True):
                if offset == -1:
                    with open(os.path.join(directory, f"{number:05d}.part"), "rb") as part:
                        _copy_range(part.fileno(), out.fileno(), size, 0, target)
                elif whole != data:
                    _copy_range(source.fileno(), out.fileno(), size, offset, target)
            out.truncate(position)
        self._place(whole, name)
        shutil.rmtree(directory, ignore_errors=True)
        return position

    def mpu_abort(self, name: str, upload_id: str) -> None:
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)


def _copy_range(source: int, target: int, size: int, source_offset: int, target_offset: int) -> None:
    """Copy bytes between files inside the kernel (copy_file_range), through a buffer where it cannot."""
    done = 0
    while done < size:
        try:
            copied = os.copy_file_range(source, target, size - done, source_offset + done, target_offset + done)
        except OSError:
            copied = 0
        if copied == 0:
            block = os.pread(source, min(CHUNK_SIZE, size - done), source_offset + done)
            if not block:
                raise OSError(f"a stored part ended {size - done} bytes early")
            copied = os.pwrite(target, block, target_offset + done)
        done += copied


class S3ArtifactStorage(S3Storage):
    """S3-compatible object storage. Uploads stream through boto3's managed transfer (bounded
    buffers); multipart uploads are S3 multipart uploads whose parts mlboard proxies, so clients
    never need to reach the bucket."""

    stages_writes = False  # a PUT replaces the object at once

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

    def save_stream(
        self, name: str, chunks: Iterable[bytes], *, limit: int | None, before_place: BeforePlace | None = None
    ) -> int:
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
        if before_place is not None:
            # An object store has no staging rename: a refused upload is removed again.
            try:
                before_place(source.size)
            except BaseException:
                self.delete(name)
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

    def mpu_put_part(
        self,
        name: str,
        upload_id: str,
        part_number: int,
        chunks: Iterable[bytes],
        *,
        num_parts: int | None = None,
        length: int | None = None,
    ) -> str:
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
