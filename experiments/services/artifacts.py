"""Artifact writes: upload (streamed), delete and multipart uploads, into the artifact storage
(experiments/storage.py), with the index table ArtifactFile kept in step.

Keys are team-scoped server-side: every key starts with ``teams/<team id>/`` and a client path
is refused unless it lies under the caller's own prefix, after MLflow's path-safety rules
(decoded until stable, no ``..`` segment, no absolute path, no backslash, no NUL or other
control characters, no ``#``) — the patterns of MLflow's path-traversal CVEs.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.exceptions import SuspiciousFileOperation
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from ..errors import WriterRefused
from ..models import ArtifactFile, Run, Team, TrackingExperiment
from ..storage import StreamError, TooLarge, Truncated, artifact_storage
from .runs import IngestError
from .tokens import token_writer_sql

TEAMS_DIR = "teams"
SCHEME = "mlflow-artifacts"
MPU_SALT = "mlboard.artifacts.mpu"
PART_SALT = "mlboard.artifacts.mpu-part"
MPU_MAX_AGE = 7 * 24 * 3600
MAX_PARTS = 10000  # S3's limit
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def invalid_path(detail: str = "") -> IngestError:
    """MLflow answers every unsafe path with exactly this code and message, which clients and MLflow's
    own tests compare whole; `detail` says at the call site what was wrong."""
    del detail
    return IngestError("Invalid path")


def max_file_size() -> int | None:
    limit = int(getattr(settings, "ARTIFACT_MAX_FILE_SIZE", 0) or 0)
    return limit or None


def too_large(limit: int) -> IngestError:
    return IngestError(
        f"Artifact too large: the limit is {limit} bytes ({limit / 1024**2:.0f} MB, setting ARTIFACT_MAX_FILE_SIZE). "
        "Store bigger files elsewhere and log their location as a tag."
    )


# --- Paths -------------------------------------------------------------------------------------


def team_prefix(team_id: int) -> str:
    return f"{TEAMS_DIR}/{team_id}"


def run_artifact_default_root(run: Run) -> str:
    """teams/<team>/<experiment>/<run id>/artifacts: where mlboard keeps a run's artifacts, also the
    key prefix for artifacts copied in by an MLflow import (the run keeps the remote URI)."""
    return f"{team_prefix(run.team_id)}/{run.experiment_id or 0}/{run.external_id}/artifacts"


def run_artifact_uri(run: Run) -> str:
    """What runs/create and runs/get return; the client resolves it against the tracking URI.
    New runs store it (services.runs.run_create); older ones get the team-scoped default."""
    return run.artifact_uri or f"{SCHEME}:/{run_artifact_default_root(run)}"


def run_artifact_uri_for_new(*, team: Team, experiment: TrackingExperiment | None, run_id: str) -> str:
    """MLflow's rule: <experiment artifact location>/<run id>/artifacts."""
    if experiment is not None and experiment.artifact_location:
        return f"{experiment.artifact_location.rstrip('/')}/{run_id}/artifacts"
    return f"{SCHEME}:/{team_prefix(team.pk)}/{experiment.pk if experiment else 0}/{run_id}/artifacts"


def run_artifact_root(run: Run) -> str | None:
    """The storage key under which the run's artifacts live, or None when the client stores them
    elsewhere itself (an experiment with an s3:// or file location, an imported run)."""
    uri = run_artifact_uri(run)
    if not uri.startswith(SCHEME + ":"):
        return None
    return urllib.parse.urlparse(uri).path.strip("/")


def experiment_artifact_location(experiment: TrackingExperiment) -> str:
    return experiment.artifact_location or f"{SCHEME}:/{team_prefix(experiment.team_id)}/{experiment.pk}"


def clean_path(raw: str | None) -> str:
    """A relative, normalised POSIX path or INVALID_PARAMETER_VALUE ("Invalid path")."""
    path = raw or ""
    # Decode until stable: %2e%2e%2f and %252e%252e%252f are both ../ (CVE-2023-6831, CVE-2024-1560).
    for _ in range(10):
        decoded = urllib.parse.unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        raise invalid_path("too many levels of URL encoding")
    if _CONTROL.search(path):
        raise invalid_path("control characters (NUL, newline, ...) are not allowed")
    if "#" in path or "?" in path:
        raise invalid_path("'#' and '?' are not allowed")  # CVE-2023-6909, CVE-2024-2928
    if "\\" in path:
        raise invalid_path("backslashes are not allowed")  # CVE-2023-2780
    if path.startswith("/") or _DRIVE.match(path) or path.lower().startswith("file:"):
        raise invalid_path("absolute paths are not allowed")  # CVE-2024-3573
    segments = path.rstrip("/").split("/") if path else []
    if ".." in segments:
        raise invalid_path("'..' is not allowed")  # CVE-2023-1177, CVE-2023-2356, CVE-2023-6015
    if any(segment in ("", ".") for segment in segments):
        raise invalid_path("empty or '.' path segments are not allowed")
    return "/".join(segments)


def artifact_key(*, team: Team, path: str | None) -> str:
    """The storage key for a client path, refused unless it lies under the caller's team."""
    key = clean_path(path)
    prefix = team_prefix(team.pk)
    if key != prefix and not key.startswith(prefix + "/"):
        raise IngestError(
            f"Artifact paths of team '{team.slug}' start with '{prefix}/'; this token cannot use '{key}'.",
            mlflow_code="PERMISSION_DENIED",
        )
    return key


def artifact_location_check(*, team: Team, location: str) -> str:
    """An experiment's artifact_location from the client: mlflow-artifacts URIs must stay in the
    team's space (CVE-2024-1483, CVE-2024-1594); other URIs are where the client itself writes."""
    if not location:
        return ""
    parsed = urllib.parse.urlparse(location)
    if "#" in location or "?" in location or "\\" in location or _CONTROL.search(location):
        raise invalid_path("artifact_location must not contain '#', '?', backslashes or control characters")
    if ".." in urllib.parse.unquote(urllib.parse.unquote(location)).split("/"):
        raise invalid_path("artifact_location must not contain '..'")
    if parsed.scheme == SCHEME:
        artifact_key(team=team, path=parsed.path.lstrip("/"))
    return location


def basename(client_path: str) -> str:
    """File name of a client-side path (the client may run on Windows)."""
    return posixpath.basename(client_path.replace("\\", "/"))


def _run_id_in(key: str) -> str | None:
    """.../<run id>/artifacts/...: the segment before the first "artifacts" past the team prefix."""
    parts = key.split("/")
    for index in range(3, len(parts) - 1):
        if parts[index] == "artifacts":
            return parts[index - 1]
    return None


def _index(*, team: Team, key: str, size: int, writer_token_id: int | None = None) -> None:
    """Upsert the index row, with the run looked up in the same statement (one round trip per
    upload: small files are dominated by per-request database work).

    With `writer_token_id`, the same statement checks that this token still writes for the team
    (live, its user active and a manager or member) and stores nothing otherwise (WriterRefused):
    the upload's permission is current when the file becomes visible, whatever the request started
    with.

    On PostgreSQL the statement commits without waiting for its WAL flush (synchronous_commit off
    for this transaction only; ARTIFACT_INDEX_ASYNC_COMMIT): the flush cost more than the rest of a
    1 MB upload. The stored bytes themselves are not fsynced either, so this loses nothing a crash
    would not: a PostgreSQL crash can drop the rows of the last fraction of a second of uploads,
    never leave a wrong one."""
    table, runs = ArtifactFile._meta.db_table, Run._meta.db_table
    content_type = (mimetypes.guess_type(key)[0] or "application/octet-stream")[:100]
    # set_config(..., true) lasts to the end of this statement's transaction; in the FROM clause it
    # runs before the commit, and in one statement it works with client- and server-side binding.
    sources, writer, params, writer_params = [], "", [], []
    if writer_token_id is not None:
        check, writer_params = token_writer_sql()
        writer = f"WITH writer AS ({check}) "
        params += [writer_token_id, team.pk, *writer_params]
        sources.append("writer")
    # Only when the statement is its own transaction: never relax a caller's larger transaction.
    if connection.vendor == "postgresql" and settings.ARTIFACT_INDEX_ASYNC_COMMIT and not connection.in_atomic_block:
        sources.append("(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit")
    params += [team.pk, team.pk, _run_id_in(key), key, size, content_type,
               connection.ops.adapt_datetimefield_value(timezone.now())]
    where = " WHERE true" if writer else ""  # SQLite needs a WHERE before ON CONFLICT after a FROM
    source = f" FROM {', '.join(sources)}" if sources else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"{writer}INSERT INTO {table} (team_id, run_id, path, size, content_type, updated_at) "
            f"SELECT %s, (SELECT id FROM {runs} WHERE team_id = %s AND external_id = %s ORDER BY id LIMIT 1), "
            f"%s, %s, %s, %s{source}{where} "
            "ON CONFLICT (path) DO UPDATE SET team_id = EXCLUDED.team_id, run_id = EXCLUDED.run_id, "
            "size = EXCLUDED.size, content_type = EXCLUDED.content_type, updated_at = EXCLUDED.updated_at "
            "RETURNING 1",
            params,
        )
        if cursor.fetchone() is None:
            raise WriterRefused()


def _storage_errors(exc: Exception) -> IngestError:
    if isinstance(exc, TooLarge):
        return too_large(exc.limit)
    if isinstance(exc, Truncated):
        return IngestError("The upload was interrupted: fewer bytes arrived than announced. Nothing was stored.")
    if isinstance(exc, SuspiciousFileOperation):
        return invalid_path(str(exc))
    if isinstance(exc, FileExistsError | NotADirectoryError | IsADirectoryError):
        return IngestError("The artifact path conflicts with an existing file or directory of that name.")
    raise exc


# --- Single uploads and deletes ----------------------------------------------------------------


def uploads_are_staged() -> bool:
    """Whether an upload becomes visible only after its index statement (local storage): then that
    statement's writer check alone guards it, and the request may start from a recent caller."""
    return artifact_storage().stages_writes


def artifact_upload(
    *, team: Team, key: str, chunks: Iterable[bytes], length: int | None = None, writer_token_id: int | None = None
) -> int:
    """Stream `chunks` into storage at `key` (a value of artifact_key) and index it; returns the size.
    With `writer_token_id` the file is placed only if that token still writes for the team, checked
    by the index statement itself (WriterRefused otherwise)."""
    if key.count("/") < 2:
        raise invalid_path("a file cannot take the place of the team's directory")
    limit = max_file_size()
    if limit is not None and length is not None and length > limit:
        raise too_large(limit)
    def index(size: int) -> None:
        _index(team=team, key=key, size=size, writer_token_id=writer_token_id)

    try:
        return artifact_storage().save_stream(key, chunks, limit=limit, before_place=index)
    except (StreamError, SuspiciousFileOperation, OSError) as exc:
        raise _storage_errors(exc) from None


def artifact_delete(*, team: Team, key: str) -> int:
    """Delete the file at `key` or everything under it; returns how many files went. Not above a
    run's (or logged model's) directory: one call never wipes a whole experiment or team."""
    if key.count("/") < 3:
        raise invalid_path("delete within a run's artifacts: teams/<team>/<experiment>/<run>/...")
    storage = artifact_storage()
    rows = list(ArtifactFile.objects.filter(team=team).filter(Q(path=key) | Q(path__startswith=key.rstrip("/") + "/")))
    try:
        for row in rows:
            storage.delete(row.path)
        if not rows:
            storage.delete(key)
    except SuspiciousFileOperation as exc:
        raise invalid_path(str(exc)) from None
    except (IsADirectoryError, FileNotFoundError):
        pass
    ArtifactFile.objects.filter(pk__in=[row.pk for row in rows]).delete()
    return len(rows)


# --- Multipart uploads -------------------------------------------------------------------------


def _handle(*, team: Team, key: str, upload_id: str) -> str:
    return signing.dumps({"t": team.pk, "k": key, "u": upload_id}, salt=MPU_SALT, compress=True)


def _unhandle(*, team: Team, key: str, handle: str) -> str:
    try:
        data = signing.loads(handle, salt=MPU_SALT, max_age=MPU_MAX_AGE)
    except signing.BadSignature:
        raise IngestError("Unknown or expired upload_id.", mlflow_code="RESOURCE_DOES_NOT_EXIST") from None
    if data.get("t") != team.pk or data.get("k") != key:
        raise IngestError("This upload_id belongs to another artifact path.", mlflow_code="RESOURCE_DOES_NOT_EXIST")
    return str(data["u"])


def artifact_mpu_create(*, team: Team, key: str, num_parts: int) -> tuple[str, list[str]]:
    """Start a multipart upload; returns the upload handle and one signed token per part (the part
    URLs carry them: the client PUTs parts without its tracking credentials, as to S3)."""
    if not 1 <= num_parts <= MAX_PARTS:
        raise IngestError(f"num_parts must be between 1 and {MAX_PARTS}, got {num_parts}.")
    try:
        upload_id = artifact_storage().mpu_create(key)
    except SuspiciousFileOperation as exc:
        raise invalid_path(str(exc)) from None
    tokens = [
        signing.dumps(
            {"t": team.pk, "k": key, "u": upload_id, "n": number, "of": num_parts}, salt=PART_SALT, compress=True
        )
        for number in range(1, num_parts + 1)
    ]
    return _handle(team=team, key=key, upload_id=upload_id), tokens


def artifact_mpu_part(*, token: str, chunks: Iterable[bytes], length: int | None) -> str:
    """Store one part; the signed token is the credential. Returns the part's ETag."""
    try:
        data: dict[str, Any] = signing.loads(token, salt=PART_SALT, max_age=MPU_MAX_AGE)
    except signing.BadSignature:
        raise IngestError("Invalid or expired part URL.", mlflow_code="PERMISSION_DENIED") from None
    limit = max_file_size()
    if limit is not None and length is not None and length > limit:
        raise too_large(limit)
    try:
        # How many parts and this part's length let local storage write it straight into place.
        num_parts = int(data["of"]) if "of" in data else None
        return artifact_storage().mpu_put_part(
            data["k"], data["u"], int(data["n"]), chunks, num_parts=num_parts, length=length
        )
    except FileNotFoundError:
        raise IngestError(
            "The multipart upload was completed or aborted.", mlflow_code="RESOURCE_DOES_NOT_EXIST"
        ) from None
    except (StreamError, SuspiciousFileOperation) as exc:
        raise _storage_errors(exc) from None


def artifact_mpu_complete(*, team: Team, key: str, handle: str, parts: list[tuple[int, str]]) -> int:
    upload_id = _unhandle(team=team, key=key, handle=handle)
    if not parts:
        raise IngestError("Missing value for required parameter 'parts'.")
    storage = artifact_storage()
    try:
        size = storage.mpu_complete(key, upload_id, parts)
    except FileNotFoundError as exc:
        raise IngestError(f"Cannot complete the upload: {exc}.", mlflow_code="RESOURCE_DOES_NOT_EXIST") from None
    except (SuspiciousFileOperation, OSError) as exc:
        raise _storage_errors(exc) from None
    limit = max_file_size()
    if limit is not None and size > limit:
        storage.delete(key)
        raise too_large(limit)
    _index(team=team, key=key, size=size)
    return size


def artifact_mpu_abort(*, team: Team, key: str, handle: str) -> None:
    artifact_storage().mpu_abort(key, _unhandle(team=team, key=key, handle=handle))
