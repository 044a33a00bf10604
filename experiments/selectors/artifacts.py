"""Artifact reads: listings from the index table (a fixed number of queries whatever the storage),
file contents streamed from the artifact storage."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from django.core.exceptions import SuspiciousFileOperation

from ..models import ArtifactFile, Run, Team
from ..services.artifacts import TEAMS_DIR, invalid_path, run_artifact_default_root, run_artifact_root, team_prefix
from ..services.runs import IngestError
from ..storage import artifact_storage

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml")
TEXT_TYPES = ("text/", "application/json", "application/yaml", "application/x-yaml")
TEXT_SUFFIXES = (".txt", ".log", ".json", ".yaml", ".yml", ".md", ".py", ".csv", ".tsv", ".toml", ".ini", ".cfg")


def content_type_for(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def artifact_list(*, team: Team, key: str) -> list[dict[str, Any]]:
    """Immediate children of `key` in MLflow's FileInfo shape (basename, is_dir, file_size).

    The caller's view of the tree holds only its own team: '' lists 'teams', 'teams' lists the
    team's id. A file path, or a path with nothing under it, lists nothing, as MLflow's local
    repository does."""
    if key == "":
        return [{"path": TEAMS_DIR, "is_dir": True}]
    if key == TEAMS_DIR:
        return [{"path": str(team.pk), "is_dir": True}]
    prefix = key.rstrip("/") + "/"
    rows = ArtifactFile.objects.filter(team=team, path__startswith=prefix).values_list("path", "size")
    files: dict[str, int] = {}
    dirs: set[str] = set()
    for path, size in rows:
        head, slash, _ = path[len(prefix) :].partition("/")
        if slash:
            dirs.add(head)
        else:
            files[head] = size
    listing = [{"path": name, "is_dir": True} for name in dirs]
    listing += [{"path": name, "is_dir": False, "file_size": size} for name, size in files.items()]
    return sorted(listing, key=lambda item: item["path"])


@dataclass(frozen=True)
class OpenArtifact:
    stream: IO[bytes]
    size: int | None
    content_type: str
    name: str


def artifact_open(*, key: str) -> OpenArtifact:
    """The stored bytes at `key` (a value of services.artifacts.artifact_key), streamed."""
    storage = artifact_storage()
    try:
        if storage.is_dir(key):
            raise IngestError(f"Artifact path refers to a directory, not a file: '{key}'")
        stream = storage.open_stream(key)
    except SuspiciousFileOperation as exc:
        raise invalid_path(str(exc)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise IngestError(f"No artifact at '{key}'.", mlflow_code="RESOURCE_DOES_NOT_EXIST") from None
    size = getattr(stream, "_content_length", None)
    if size is None and hasattr(stream, "fileno"):
        size = os.fstat(stream.fileno()).st_size
    return OpenArtifact(
        stream=stream,
        size=int(size) if size is not None else None,
        content_type=content_type_for(key),
        name=key.rsplit("/", 1)[-1],
    )


def _root_prefix(run: Run) -> str:
    # Runs whose URI points elsewhere (imported ones) keep copied artifacts under the default root.
    return f"{run_artifact_root(run) or run_artifact_default_root(run)}/"


def run_artifact_key(run: Run, relative: str) -> str:
    return f"{_root_prefix(run)}{relative}"


def team_owns_key(*, team_id: int, key: str) -> bool:
    return key.startswith(team_prefix(team_id) + "/")


# --- Run page ----------------------------------------------------------------------------------


@dataclass
class TreeNode:
    name: str
    path: str  # relative to the run's artifact root
    is_dir: bool
    size: int = 0
    content_type: str = ""
    children: list[TreeNode] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return preview_kind(self.path, self.content_type)


def preview_kind(path: str, content_type: str) -> str:
    lower = path.lower()
    if content_type in IMAGE_TYPES:
        return "image"
    if lower.endswith((".csv", ".tsv")):
        return "table"
    if content_type.startswith(TEXT_TYPES) or lower.endswith(TEXT_SUFFIXES) or lower.endswith("mlmodel"):
        return "text"
    return "binary"


def run_artifacts(*, run: Run) -> tuple[list[TreeNode], int]:
    """The run's artifact tree (directories first) and its file count. One query."""
    root = _root_prefix(run)
    rows = ArtifactFile.objects.filter(run=run).order_by("path").values_list("path", "size", "content_type")
    top = TreeNode(name="", path="", is_dir=True)
    index: dict[str, TreeNode] = {"": top}
    count = 0
    for path, size, content_type in rows:
        relative = path[len(root) :] if root and path.startswith(root) else path
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in index:
                node = TreeNode(name=parts[depth - 1], path=directory, is_dir=True)
                index["/".join(parts[: depth - 1])].children.append(node)
                index[directory] = node
        parent = index["/".join(parts[:-1])]
        parent.children.append(
            TreeNode(name=parts[-1], path=relative, is_dir=False, size=size, content_type=content_type)
        )
        count += 1
    _sort(top)
    return top.children, count


def _sort(node: TreeNode) -> None:
    node.children.sort(key=lambda child: (not child.is_dir, child.name))
    for child in node.children:
        _sort(child)


def run_artifact_list(*, run: Run, relative: str) -> list[dict[str, Any]]:
    """Children of `relative` (a clean run-relative path) in MLflow's ListArtifacts shape: paths
    relative to the run's artifact root, as `mlflow server` answers runs it does not proxy too."""
    key = run_artifact_key(run, relative).rstrip("/")
    listing = artifact_list(team=run.team, key=key) if key.startswith(TEAMS_DIR + "/") else []
    base = relative.strip("/")
    return [{**item, "path": f"{base}/{item['path']}" if base else item["path"]} for item in listing]


def run_artifact_file(*, run: Run, relative: str) -> ArtifactFile | None:
    return ArtifactFile.objects.filter(run=run, path=run_artifact_key(run, relative)).first()


# --- Card page ---------------------------------------------------------------------------------


def runs_images(*, runs: Iterable[Run], per_run: int = 8) -> dict[int, list[tuple[str, str]]]:
    """Images logged by each run, as (relative path, file name), at most `per_run` each. One query."""
    runs = list(runs)
    roots = {run.pk: _root_prefix(run) for run in runs}
    found: dict[int, list[tuple[str, str]]] = {run.pk: [] for run in runs}
    rows = (
        ArtifactFile.objects.filter(run_id__in=list(roots), content_type__in=IMAGE_TYPES)
        .order_by("run_id", "path")
        .values_list("run_id", "path")
    )
    for run_id, path in rows:
        if len(found[run_id]) >= per_run:
            continue
        root = roots[run_id]
        relative = path[len(root) :] if root and path.startswith(root) else path
        found[run_id].append((relative, relative.rsplit("/", 1)[-1]))
    return found
