"""Helper module (no tests): a small in-process MLflow tracking server speaking the REST 2.0 JSON
shapes (read from mlflow's service.proto: SearchExperiments, SearchRuns, GetRun, GetMetricHistory), for importer tests.

Pages are deliberately tiny so that every pagination path is exercised.
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/api/2.0/mlflow/"
ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts/artifacts"
FILTER_RE = re.compile(r"^attributes\.(start_time|end_time) >= (\d+)$")


class FakeMlflow:
    def __init__(self, *, token: str = "", page_size: int = 2, history_page_size: int = 3) -> None:
        self.token = token
        self.page_size = page_size
        self.history_page_size = history_page_size
        self.accept_filters = True
        self.experiments: list[dict[str, Any]] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.history: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        # mlflow-artifacts proxy (`mlflow server --serve-artifacts`): root-relative path -> bytes
        self.artifacts: dict[str, bytes] = {}
        self.artifact_downloads: list[str] = []
        self.unlistable: set[str] = set()  # runs whose store the server cannot read (artifacts/list fails)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # --- test data -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_experiment(self, name: str, *, tags: dict[str, str] | None = None) -> str:
        experiment_id = str(len(self.experiments) + 1)
        self.experiments.append({
            "experiment_id": experiment_id, "name": name, "artifact_location": f"s3://bucket/{experiment_id}",
            "lifecycle_stage": "active", "creation_time": 1_700_000_000_000, "last_update_time": 1_700_000_000_000,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        })
        return experiment_id

    def add_run(
        self, experiment_id: str, run_id: str, *, status: str = "FINISHED", start: int, end: int | None = None,
        user: str = "", params: dict[str, str] | None = None, tags: dict[str, str] | None = None, name: str = "",
    ) -> None:
        info = {
            "run_id": run_id, "run_uuid": run_id, "experiment_id": experiment_id,
            "run_name": name or (tags or {}).get("mlflow.runName") or run_id,
            "user_id": user, "status": status, "start_time": start, "artifact_uri": f"s3://bucket/{run_id}",
            "lifecycle_stage": "active",
        }
        if end is not None:
            info["end_time"] = end
        self.runs[run_id] = {
            "info": info,
            "params": [{"key": k, "value": v} for k, v in (params or {}).items()],
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        self.history[run_id] = {}

    def log(self, run_id: str, key: str, points: list[tuple[int, float]], *, base_ts: int = 1_700_000_100_000) -> None:
        series = self.history[run_id].setdefault(key, [])
        for step, value in points:
            series.append({"key": key, "value": value, "step": step, "timestamp": base_ts + step})

    def finish(self, run_id: str, *, end: int, status: str = "FINISHED") -> None:
        self.runs[run_id]["info"].update(status=status, end_time=end)

    def add_artifact(self, run_id: str, path: str, content: bytes, *, proxied: bool = True) -> None:
        """Store a file the way `mlflow server --serve-artifacts` does (the run's URI points at the proxy),
        or, not proxied, in the run's own s3:// location that only the server itself reads."""
        info = self.runs[run_id]["info"]
        if proxied:
            root = f"{info['experiment_id']}/{run_id}/artifacts"
            info["artifact_uri"] = f"mlflow-artifacts:/{root}"
            self.artifacts[f"{root}/{path}"] = content
        else:
            self.artifacts[f"{info['artifact_uri']}/{path}"] = content

    def _artifact_list(self, path: str, *, run_relative: str = "") -> dict[str, Any]:
        """Proxy listings name children by basename; run-scoped ones (artifacts/list) by run-relative path."""
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for key, content in self.artifacts.items():
            if not key.startswith(prefix):
                continue
            head, _, rest = key[len(prefix):].partition("/")
            name = f"{run_relative}/{head}" if run_relative else head
            entries[head] = {"path": name, "is_dir": True} if rest else {
                "path": name, "is_dir": False, "file_size": len(content)}
        return {"files": sorted(entries.values(), key=lambda e: e["path"])} if entries else {}

    def _run_artifacts_list(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`artifacts/list` of the tracking API: any run, whatever its store, paths relative to the run."""
        run = self.runs.get(args.get("run_id", ""))
        if run is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No such run"}
        if args.get("run_id") in self.unlistable:
            return 500, {"error_code": "INTERNAL_ERROR", "message": "botocore: access denied"}
        root, relative = run["info"]["artifact_uri"], args.get("path", "").strip("/")
        if root.startswith("mlflow-artifacts:/"):
            root = root[len("mlflow-artifacts:/"):]
        return 200, {"root_uri": run["info"]["artifact_uri"],
                     **self._artifact_list(f"{root}/{relative}".rstrip("/"), run_relative=relative)}

    def calls(self, endpoint: str) -> list[dict[str, Any]]:
        return [args for _m, path, args in self.requests if path == endpoint]

    # --- serialisation ----------------------------------------------------------------------------

    @staticmethod
    def _metric_json(point: dict[str, Any]) -> dict[str, Any]:
        value = point["value"]
        if isinstance(value, float) and math.isnan(value):
            value = "NaN"  # protobuf JSON writes non-finite doubles as strings
        return {**point, "value": value}

    def _run_json(self, run_id: str) -> dict[str, Any]:
        run = self.runs[run_id]
        latest = []
        for series in self.history[run_id].values():
            latest.append(self._metric_json(max(series, key=lambda p: (p["step"], p["timestamp"]))))
        return {"info": dict(run["info"]), "data": {"metrics": latest, "params": run["params"], "tags": run["tags"]}}

    # --- HTTP -------------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _artifacts(self, parts: Any) -> None:
                if not self._authorized():
                    return
                rest = parts.path[len(ARTIFACTS_PREFIX):].strip("/")
                if not rest:  # listing: GET .../artifacts?path=<dir>
                    path = {k: v[0] for k, v in parse_qs(parts.query).items()}.get("path", "")
                    self._send(200, fake._artifact_list(path))
                    return
                self._send_file(rest)

            def _authorized(self) -> bool:
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._send(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid credentials"})
                    return False
                return True

            def _send_file(self, key: str) -> None:
                """The stored file at `key` as the download answer (recorded), or MLflow's 404."""
                content = fake.artifacts.get(key)
                if content is None:
                    self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No such file"})
                    return
                with fake._lock:
                    fake.artifact_downloads.append(key)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _get_artifact(self, parts: Any) -> None:
                """The server's `get-artifact` route: one file of a run, from wherever the run stores it."""
                if not self._authorized():
                    return
                args = {k: v[0] for k, v in parse_qs(parts.query).items()}
                run = fake.runs.get(args.get("run_id", ""))
                if run is None:
                    self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No such run"})
                    return
                root = run["info"]["artifact_uri"]
                if root.startswith("mlflow-artifacts:/"):
                    root = root[len("mlflow-artifacts:/"):]
                self._send_file(f"{root}/{args.get('path', '')}")

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                if method == "GET" and parts.path.startswith(ARTIFACTS_PREFIX):
                    self._artifacts(parts)
                    return
                if method == "GET" and parts.path == "/get-artifact":
                    self._get_artifact(parts)
                    return
                if not parts.path.startswith(PREFIX):
                    self._send(404, {})
                    self.close_connection = True
                    return
                endpoint = parts.path[len(PREFIX):]
                if method == "GET":
                    args = {k: v[0] for k, v in parse_qs(parts.query).items()}
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    args = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append((method, endpoint, args))
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._send(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid credentials"})
                    return
                handler = {
                    ("POST", "experiments/search"): fake._experiments_search,
                    ("POST", "runs/search"): fake._runs_search,
                    ("GET", "runs/get"): fake._runs_get,
                    ("GET", "metrics/get-history"): fake._history,
                    ("GET", "artifacts/list"): fake._run_artifacts_list,
                }.get((method, endpoint))
                if handler is None:
                    self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No {method} {endpoint}"})
                    return
                status, payload = handler(args)
                self._send(status, payload)

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

        return Handler

    def _page(self, items: list[Any], args: dict[str, Any], size: int, key: str) -> dict[str, Any]:
        start = int(args.get("page_token") or 0)
        size = min(size, int(args.get("max_results") or size))
        payload: dict[str, Any] = {key: items[start:start + size]}
        if start + size < len(items):
            payload["next_page_token"] = str(start + size)
        return payload

    def _experiments_search(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, self._page(self.experiments, args, self.page_size, "experiments")

    def _runs_search(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ids = set(args.get("experiment_ids") or [])
        runs = [r for r in self.runs.values() if r["info"]["experiment_id"] in ids]
        flt = (args.get("filter") or "").strip()
        if flt:
            match = FILTER_RE.match(flt)
            if not self.accept_filters or match is None:
                return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Invalid filter {flt!r}"}
            attr, bound = match.group(1), int(match.group(2))
            runs = [r for r in runs if (r["info"].get(attr) or 0) >= bound]
        runs.sort(key=lambda r: -r["info"]["start_time"])
        return 200, self._page([self._run_json(r["info"]["run_id"]) for r in runs], args, self.page_size, "runs")

    def _runs_get(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        run_id = args.get("run_id", "")
        if run_id not in self.runs:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{run_id}' not found"}
        return 200, {"run": self._run_json(run_id)}

    def _history(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        run_id = args.get("run_id", "")
        if run_id not in self.runs:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{run_id}' not found"}
        series = [self._metric_json(p) for p in self.history[run_id].get(args.get("metric_key", ""), [])]
        return 200, self._page(series, args, self.history_page_size, "metrics")

    def __enter__(self) -> FakeMlflow:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
