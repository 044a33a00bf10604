"""Local artifact storage's multipart uploads: parts of one size are written once, straight into
their place in the final file; anything else is still assembled correctly, atomically."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from experiments.storage import UPLOADS_DIR, LocalArtifactStorage

KEY = "teams/1/0/run/artifacts/model.bin"


@pytest.fixture
def storage(tmp_path) -> LocalArtifactStorage:
    return LocalArtifactStorage(location=str(tmp_path))


def _chunks(data: bytes, size: int = 3) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _put(storage, upload_id, number, data, *, num_parts, length=True) -> tuple[int, str]:
    etag = storage.mpu_put_part(
        KEY, upload_id, number, _chunks(data), num_parts=num_parts, length=len(data) if length else None
    )
    assert etag == hashlib.md5(data).hexdigest()
    return number, etag


def _kept(storage, upload_id) -> list[str]:
    """Parts stored apart from the assembled file (each of those is written a second time later)."""
    return sorted(p.name for p in (Path(storage.location) / UPLOADS_DIR / upload_id).glob("*.part"))


@pytest.mark.parametrize("order", [[1, 2, 3, 4], [2, 4, 3, 1]])
def test_parts_of_one_size_go_straight_into_place(storage, order):
    parts = {1: os.urandom(10), 2: os.urandom(10), 3: os.urandom(10), 4: os.urandom(4)}
    upload_id = storage.mpu_create(KEY)
    done = [_put(storage, upload_id, n, parts[n], num_parts=4) for n in order]
    assert _kept(storage, upload_id) == []
    assert storage.mpu_complete(KEY, upload_id, done) == 34
    assert Path(storage.path(KEY)).read_bytes() == b"".join(parts[n] for n in (1, 2, 3, 4))
    assert not any((Path(storage.location) / UPLOADS_DIR).iterdir())


def test_last_part_before_the_size_is_known_is_copied_in(storage):
    parts = {1: os.urandom(8), 2: os.urandom(8), 3: os.urandom(5)}
    upload_id = storage.mpu_create(KEY)
    done = [_put(storage, upload_id, n, parts[n], num_parts=3) for n in (3, 1, 2)]
    assert _kept(storage, upload_id) == ["00003.part"]
    assert storage.mpu_complete(KEY, upload_id, done) == 21
    assert Path(storage.path(KEY)).read_bytes() == parts[1] + parts[2] + parts[3]


@pytest.mark.parametrize(
    "sizes, lengths",
    [
        ([9, 4, 6], True),  # first part longer than the others
        ([4, 9, 6], True),  # a middle part longer than the first
        ([5, 5, 9], True),  # last part longer than the others
        ([5, 5, 3], False),  # no Content-Length (chunked transfer)
    ],
)
def test_parts_of_other_sizes_are_assembled_in_order(storage, sizes, lengths):
    parts = {n: os.urandom(size) for n, size in enumerate(sizes, start=1)}
    upload_id = storage.mpu_create(KEY)
    done = [_put(storage, upload_id, n, parts[n], num_parts=3, length=lengths) for n in (1, 2, 3)]
    assert storage.mpu_complete(KEY, upload_id, done) == sum(sizes)
    assert Path(storage.path(KEY)).read_bytes() == parts[1] + parts[2] + parts[3]


def test_only_the_listed_parts_make_the_file(storage):
    parts = {n: os.urandom(6) for n in (1, 2, 3)}
    upload_id = storage.mpu_create(KEY)
    done = [_put(storage, upload_id, n, parts[n], num_parts=3) for n in (1, 2, 3)]
    assert storage.mpu_complete(KEY, upload_id, [done[0], done[2]]) == 12
    assert Path(storage.path(KEY)).read_bytes() == parts[1] + parts[3]


def test_a_retried_part_replaces_the_first_attempt(storage):
    upload_id = storage.mpu_create(KEY)
    _put(storage, upload_id, 1, b"x" * 6, num_parts=2)
    done = [_put(storage, upload_id, 1, b"a" * 6, num_parts=2), _put(storage, upload_id, 2, b"b", num_parts=2)]
    storage.mpu_complete(KEY, upload_id, done)
    assert Path(storage.path(KEY)).read_bytes() == b"aaaaaab"


def test_missing_part_or_wrong_etag_refuses_and_leaves_nothing_in_place(storage):
    upload_id = storage.mpu_create(KEY)
    one = _put(storage, upload_id, 1, b"abc", num_parts=2)
    with pytest.raises(FileNotFoundError, match="part 2 was never uploaded"):
        storage.mpu_complete(KEY, upload_id, [one, (2, "x")])
    two = _put(storage, upload_id, 2, b"d", num_parts=2)
    with pytest.raises(FileNotFoundError, match="ETag"):
        storage.mpu_complete(KEY, upload_id, [(1, "0" * 32), two])
    with pytest.raises(FileNotFoundError, match="twice"):
        storage.mpu_complete(KEY, upload_id, [one, one, two])
    assert not Path(storage.path(KEY)).exists()
    assert storage.mpu_complete(KEY, upload_id, [one, two]) == 4


def test_abort_removes_everything_and_later_parts_are_refused(storage):
    upload_id = storage.mpu_create(KEY)
    _put(storage, upload_id, 1, b"abc", num_parts=2)
    storage.mpu_abort(KEY, upload_id)
    assert not any((Path(storage.location) / UPLOADS_DIR).iterdir())
    with pytest.raises(FileNotFoundError):
        _put(storage, upload_id, 2, b"d", num_parts=2)
    with pytest.raises(FileNotFoundError):
        storage.mpu_complete(KEY, upload_id, [(1, "")])
    assert not Path(storage.path(KEY)).exists()


def test_single_part_upload_and_tokens_without_a_part_count(storage):
    upload_id = storage.mpu_create(KEY)
    done = [_put(storage, upload_id, 1, b"only", num_parts=1)]
    assert _kept(storage, upload_id) == []
    storage.mpu_complete(KEY, upload_id, done)
    assert Path(storage.path(KEY)).read_bytes() == b"only"
    # Part URLs handed out before parts knew their count still work (kept apart, copied in).
    upload_id = storage.mpu_create(KEY)
    done = [(n, storage.mpu_put_part(KEY, upload_id, n, [body])) for n, body in ((1, b"ab"), (2, b"c"))]
    storage.mpu_complete(KEY, upload_id, done)
    assert Path(storage.path(KEY)).read_bytes() == b"abc"
