"""MLflow's artifact proxy API (``mlflow server --serve-artifacts``), as the client uses it with an
http(s) tracking URI and ``mlflow-artifacts:/`` artifact URIs:

    PUT    api/2.0/mlflow-artifacts/artifacts/<path>        upload (streamed to storage)
    GET    api/2.0/mlflow-artifacts/artifacts/<path>        download (streamed)
    GET    api/2.0/mlflow-artifacts/artifacts?path=<path>   list
    DELETE api/2.0/mlflow-artifacts/artifacts/<path>        delete a file or a directory
    POST   api/2.0/mlflow-artifacts/mpu/create|complete|abort/<path>
    PUT    api/2.0/mlflow-artifacts/mpu/part?token=...      (the part URLs that create hands out)
    GET    api/3.0/mlflow/server-info                       (tells the client multipart works)

Handlers stay thin: paths are checked and team-scoped by services.artifacts, bytes move through
the artifact storage. Bodies are read in 1 MB chunks straight from the socket; nothing here ever
touches request.body, so no file is held in memory whatever its size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from ..errors import WriterRefused
from ..selectors import artifacts as artifact_selectors
from ..services import artifacts as artifact_services
from ..services.runs import IngestError
from ..storage import CHUNK_SIZE, Truncated
from . import model_selectors, selectors
from .http import (
    Body,
    Caller,
    MlflowApiError,
    authenticate,
    error_response,
    exception_response,
    forget_caller,
    invalid,
    json_response,
    mlflow_endpoint,
    parse_body,
)

# A refused upload is read to its end (up to this much) so the client gets the JSON error rather
# than a connection reset in the middle of sending.
DRAIN_LIMIT = 64 * 1024 * 1024
PROXY_SCHEME = f"{artifact_services.SCHEME}:"


class ArtifactFileResponse(FileResponse):
    block_size = CHUNK_SIZE


def _content_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _body_chunks(request: HttpRequest) -> Iterator[bytes]:
    """The request body in chunks, checked against Content-Length (a dropped client stores nothing)."""
    length = _content_length(request)
    if length is None:
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower() and request.META.get(
            "wsgi.input_terminated"
        ):
            return _until_eof(request.META["wsgi.input"])
        raise invalid("Content-Length is required to upload an artifact.")
    return _exactly(request, length)


def _until_eof(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_SIZE):
        yield chunk


def _exactly(request: HttpRequest, length: int) -> Iterator[bytes]:
    received = 0
    while received < length:
        chunk = request.read(min(CHUNK_SIZE, length - received))
        if not chunk:
            raise Truncated()
        received += len(chunk)
        yield chunk


def _drain(request: HttpRequest) -> None:
    length = _content_length(request)
    if length is None or length > DRAIN_LIMIT:
        return
    try:
        while request.read(CHUNK_SIZE):
            pass
    except OSError:
        pass


View = Callable[..., HttpResponse]


def artifact_endpoint(*methods: str, auth: bool = True, checked_put: bool = False) -> Callable[[View], View]:
    """Method check, token auth and MLflow's error JSON for every failure (never HTML).
    `checked_put`: a PUT's upload re-checks the token when it lands (see artifact), so on staged
    storage its caller may come from the last few seconds without a database round trip."""

    def decorate(handler: View) -> View:
        @csrf_exempt
        @wraps(handler)
        def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return error_response(
                    "ENDPOINT_NOT_FOUND", f"{request.method} is not supported here; use {' or '.join(methods)}."
                )
            try:
                if auth:
                    checked = checked_put and request.method == "PUT" and artifact_services.uploads_are_staged()
                    return handler(request, authenticate(request, for_checked_write=checked), *args, **kwargs)
                return handler(request, *args, **kwargs)
            except Exception as exc:
                if request.method == "PUT":
                    _drain(request)
                return exception_response(request, exc)

        return view

    return decorate


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if _content_length(request) and _content_length(request) > 1024 * 1024:  # type: ignore[operator]
        raise invalid("The request body is too large.")
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise MlflowApiError("BAD_REQUEST", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise MlflowApiError("BAD_REQUEST", "The request body must be a JSON object.")
    return data


def _string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None or value == "":
        raise invalid(f"Missing value for required parameter '{name}'.")
    if not isinstance(value, str):
        raise invalid(f"Invalid value {json.dumps(value)} for parameter '{name}' supplied: expected a string.")
    return value


# --- Files -------------------------------------------------------------------------------------


@artifact_endpoint("GET", "PUT", "DELETE", checked_put=True)
def artifact(request: HttpRequest, caller: Caller, artifact_path: str | None = None) -> HttpResponse:
    if request.method == "GET" and artifact_path is None:
        return _list(request, caller)
    if not artifact_path:
        raise artifact_services.invalid_path("an artifact path is required")
    key = artifact_services.artifact_key(team=caller.team, path=artifact_path)
    if request.method == "PUT":
        caller.ensure_can_write()
        try:
            artifact_services.artifact_upload(
                team=caller.team,
                key=key,
                chunks=_body_chunks(request),
                length=_content_length(request),
                writer_token_id=caller.token.pk,
            )
        except WriterRefused:
            # Revoked, left the team or now a viewer: say which, as a fresh request would.
            forget_caller(request)
            authenticate(request).ensure_can_write()
            raise MlflowApiError(
                "PERMISSION_DENIED", "Your access to this team changed during the upload; nothing was stored."
            ) from None
        return json_response({})
    if request.method == "DELETE":
        caller.ensure_can_write()
        artifact_services.artifact_delete(team=caller.team, key=key)
        return json_response({})
    return download_response(artifact_selectors.artifact_open(key=key))


def download_response(opened: artifact_selectors.OpenArtifact, *, inline: bool = False) -> HttpResponse:
    response = ArtifactFileResponse(
        opened.stream, as_attachment=not inline, filename=opened.name, content_type=opened.content_type
    )
    if opened.size is not None:
        response["Content-Length"] = str(opened.size)
    # Stored bytes are never run as a page from mlboard's origin (HTML, SVG with scripts).
    response["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _list(request: HttpRequest, caller: Caller) -> HttpResponse:
    raw = request.GET.get("path")
    key = artifact_services.clean_path(raw)
    if key not in ("", artifact_services.TEAMS_DIR):
        key = artifact_services.artifact_key(team=caller.team, path=key)
    return json_response({"files": artifact_selectors.artifact_list(team=caller.team, key=key)})


# --- Multipart uploads -------------------------------------------------------------------------


def _mpu_key(caller: Caller, artifact_path: str | None, data: dict[str, Any]) -> str:
    """The directory comes in the URL, the file name is the basename of the client's local path."""
    name = artifact_services.basename(_string(data, "path"))
    return artifact_services.artifact_key(team=caller.team, path=f"{artifact_path or ''}/{name}".lstrip("/"))


@artifact_endpoint("POST")
def mpu_create(request: HttpRequest, caller: Caller, artifact_path: str | None = None) -> HttpResponse:
    caller.ensure_can_write()
    data = _json_body(request)
    key = _mpu_key(caller, artifact_path, data)
    try:
        num_parts = int(data.get("num_parts") or 1)
    except (TypeError, ValueError):
        raise invalid("Parameter 'num_parts' must be an integer.") from None
    handle, tokens = artifact_services.artifact_mpu_create(team=caller.team, key=key, num_parts=num_parts)
    part_url = request.build_absolute_uri(reverse("mlflow-artifacts-mpu-part"))
    return json_response(
        {
            "upload_id": handle,
            "credentials": [
                {"url": f"{part_url}?token={token}", "part_number": number, "headers": {}}
                for number, token in enumerate(tokens, start=1)
            ],
        }
    )


@artifact_endpoint("PUT", auth=False)
def mpu_part(request: HttpRequest) -> HttpResponse:
    token = request.GET.get("token", "")
    if not token:
        raise IngestError("Missing part token.", mlflow_code="PERMISSION_DENIED")
    etag = artifact_services.artifact_mpu_part(
        token=token, chunks=_body_chunks(request), length=_content_length(request)
    )
    response = json_response({})
    response["ETag"] = f'"{etag}"'
    return response


@artifact_endpoint("POST")
def mpu_complete(request: HttpRequest, caller: Caller, artifact_path: str | None = None) -> HttpResponse:
    caller.ensure_can_write()
    data = _json_body(request)
    key = _mpu_key(caller, artifact_path, data)
    parts = []
    for index, part in enumerate(data.get("parts") or []):
        if not isinstance(part, dict) or not isinstance(part.get("part_number"), int):
            raise invalid(f"Invalid value for parameter 'parts[{index}]': expected part_number and etag.")
        parts.append((part["part_number"], str(part.get("etag") or "").strip('"')))
    artifact_services.artifact_mpu_complete(team=caller.team, key=key, handle=_string(data, "upload_id"), parts=parts)
    return json_response({})


@artifact_endpoint("POST")
def mpu_abort(request: HttpRequest, caller: Caller, artifact_path: str | None = None) -> HttpResponse:
    caller.ensure_can_write()
    data = _json_body(request)
    key = _mpu_key(caller, artifact_path, data)
    artifact_services.artifact_mpu_abort(team=caller.team, key=key, handle=_string(data, "upload_id"))
    return json_response({})


@artifact_endpoint("GET")
def presigned(request: HttpRequest, caller: Caller, artifact_path: str | None = None) -> HttpResponse:
    # Downloads are proxied (streamed); a client that forces multipart download falls back on 501.
    return error_response(
        "NOT_IMPLEMENTED",
        "Presigned downloads are not supported; artifacts download through mlflow-artifacts/artifacts.",
    )


@artifact_endpoint("GET", auth=False)
def server_info(request: HttpRequest) -> HttpResponse:
    return json_response(
        {
            "store_type": "SqlStore",
            "workspaces_enabled": False,
            "multipart_uploads_enabled": True,
            "multipart_downloads_enabled": False,
        }
    )


# --- Run and model-version artifacts by id (REST artifacts/list, the UI's get-artifact routes) ---------


@mlflow_endpoint("GET")
def artifacts_list(caller: Caller, body: Body) -> dict[str, Any]:
    """GET api/2.0/mlflow/artifacts/list?run_id=&path=: MLflow's ListArtifacts, one page."""
    relative = artifact_services.clean_path(body.string("path"))
    run = selectors.run_by_id(team=caller.team, run_id=body.run_id())
    files = artifact_selectors.run_artifact_listing(run=run, relative=relative)
    return {"root_uri": artifact_services.run_artifact_uri(run), "files": files}


@artifact_endpoint("GET")
def run_artifact_get(request: HttpRequest, caller: Caller) -> HttpResponse:
    """GET get-artifact?run_id=&path=: one file of a run, as mlflow server's UI route sends it."""
    body = parse_body(request)
    relative = artifact_services.clean_path(body.string("path", required=True))
    run = selectors.run_by_id(team=caller.team, run_id=body.run_id())  # a missing id is a 400, not a 404
    return download_response(artifact_selectors.artifact_open(key=artifact_selectors.run_artifact_key(run, relative)))


@artifact_endpoint("GET")
def model_version_artifact_get(request: HttpRequest, caller: Caller) -> HttpResponse:
    """GET model-versions/get-artifact?name=&version=&path=: one file of a registered version."""
    relative = artifact_services.clean_path(request.GET.get("path"))
    version = model_selectors.model_version_get(
        team=caller.team, name=request.GET.get("name") or "", version=request.GET.get("version")
    )
    uri = version.storage_location or version.source
    if not uri.startswith(PROXY_SCHEME):
        raise IngestError(f"The artifacts of this version are not stored by this server: {uri}")
    root = artifact_services.clean_path(uri[len(PROXY_SCHEME) :].lstrip("/"))
    key = artifact_services.artifact_key(team=caller.team, path=f"{root}/{relative}" if relative else root)
    return download_response(artifact_selectors.artifact_open(key=key))
