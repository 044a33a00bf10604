"""The team's model registry (MLflow's): registered models, their versions, tags, aliases and stages.

Names are unique per team; a version number is the model's next integer. A version made from a
logged model (source ``models:/m-...``) downloads from that model's artifact location, as in MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from ..models import LoggedModel, ModelVersion, RegisteredModel, Run, Team
from .logged_models import logged_model_record_registration
from .runs import IngestError, _clean_tags

STAGES = {"none": "None", "staging": "Staging", "production": "Production", "archived": "Archived"}
MAX_MODEL_NAME_LENGTH = 256
# MLflow: aliases are identifiers; "latest" and version-like names ("v1", "1") are reserved.
_ALIAS = re.compile(r"^[\w\-]+$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+|\d+)$", re.IGNORECASE)
_LOGGED_MODEL_SOURCE = re.compile(r"^models:/(m-[0-9a-f]+)/?$")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise IngestError("Registered model name cannot be empty.")
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise IngestError(f"Registered model name is longer than {MAX_MODEL_NAME_LENGTH} characters.")
    if "/" in name or ":" in name:
        raise IngestError(f"Invalid registered model name '{name}': names may not contain '/' or ':'.")
    return name


def _touch(model: RegisteredModel) -> None:
    model.updated_at = timezone.now()
    RegisteredModel.objects.filter(pk=model.pk).update(updated_at=model.updated_at)


@transaction.atomic
def registered_model_create(
    *, team: Team, name: str, description: str = "", tags: Mapping[str, Any] | None = None
) -> RegisteredModel:
    name = _check_name(name)
    try:
        with transaction.atomic():
            return RegisteredModel.objects.create(
                team=team, name=name, description=description or "", tags=_clean_tags(tags or {})
            )
    except IntegrityError:
        raise IngestError(
            f"Registered Model (name={name}) already exists.", mlflow_code="RESOURCE_ALREADY_EXISTS"
        ) from None


@transaction.atomic
def registered_model_update(*, model: RegisteredModel, description: str) -> RegisteredModel:
    model.description = description
    model.updated_at = timezone.now()
    model.save(update_fields=["description", "updated_at"])
    return model


@transaction.atomic
def registered_model_rename(*, model: RegisteredModel, new_name: str) -> RegisteredModel:
    new_name = _check_name(new_name)
    if RegisteredModel.objects.filter(team_id=model.team_id, name=new_name).exclude(pk=model.pk).exists():
        raise IngestError(
            f"Registered Model (name={new_name}) already exists.", mlflow_code="RESOURCE_ALREADY_EXISTS"
        )
    model.name = new_name
    model.updated_at = timezone.now()
    model.save(update_fields=["name", "updated_at"])
    return model


@transaction.atomic
def registered_model_delete(*, model: RegisteredModel) -> None:
    model.delete()


@transaction.atomic
def registered_model_set_tag(*, model: RegisteredModel, key: str, value: Any) -> RegisteredModel:
    model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    model.tags = {**model.tags, **_clean_tags({key: value})}
    model.updated_at = timezone.now()
    model.save(update_fields=["tags", "updated_at"])
    return model


@transaction.atomic
def registered_model_delete_tag(*, model: RegisteredModel, key: str) -> RegisteredModel:
    model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    model.tags = {k: v for k, v in model.tags.items() if k != key}
    model.save(update_fields=["tags"])
    return model


@transaction.atomic
def registered_model_set_alias(*, model: RegisteredModel, alias: str, version: int) -> RegisteredModel:
    if not isinstance(alias, str) or not _ALIAS.match(alias) or len(alias) > 255:
        raise IngestError(f"Invalid alias name '{alias}': use letters, digits, '_' and '-'.")
    if _RESERVED_ALIAS.match(alias):
        raise IngestError(f"'{alias}' is a reserved alias name; choose another.")
    model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    if not model.versions.filter(version=version).exists():
        raise IngestError(
            f"Model Version (name={model.name}, version={version}) not found",
            mlflow_code="RESOURCE_DOES_NOT_EXIST",
        )
    model.aliases = {**model.aliases, alias: version}
    model.updated_at = timezone.now()
    model.save(update_fields=["aliases", "updated_at"])
    return model


@transaction.atomic
def registered_model_delete_alias(*, model: RegisteredModel, alias: str) -> RegisteredModel:
    model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    model.aliases = {k: v for k, v in model.aliases.items() if k != alias}
    model.save(update_fields=["aliases"])
    return model


# --- Versions ----------------------------------------------------------------------------------


@transaction.atomic
def model_version_create(
    *,
    model: RegisteredModel,
    source: str,
    run: Run | None = None,
    run_external_id: str = "",
    logged_model: LoggedModel | None = None,
    tags: Mapping[str, Any] | None = None,
    description: str = "",
    run_link: str = "",
    user_id: str = "",
) -> ModelVersion:
    if not source:
        raise IngestError("Missing value for required parameter 'source'.")
    if logged_model is None:
        match = _LOGGED_MODEL_SOURCE.match(source)
        if match:
            logged_model = LoggedModel.objects.filter(team_id=model.team_id, model_id=match.group(1)).first()
            if logged_model is None:
                raise IngestError(
                    f"Logged model with ID '{match.group(1)}' not found.", mlflow_code="RESOURCE_DOES_NOT_EXIST"
                )
    if logged_model is not None and run is None and logged_model.source_run_id:
        run = logged_model.source_run
        run_external_id = run_external_id or (run.external_id if run else "")
    locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    number = (locked.versions.aggregate(top=Max("version"))["top"] or 0) + 1
    now = timezone.now()
    version = ModelVersion.objects.create(
        registered_model=locked,
        version=number,
        source=source,
        run=run,
        run_external_id=run_external_id or (run.external_id if run else ""),
        logged_model=logged_model,
        run_link=run_link or "",
        storage_location=logged_model.artifact_location if logged_model is not None else source,
        tags=_clean_tags(tags or {}),
        description=description or "",
        user_id=user_id,
        created_at=now,
        updated_at=now,
    )
    _touch(locked)
    if logged_model is not None:
        logged_model_record_registration(model=logged_model, name=locked.name, version=number)
    return version


@transaction.atomic
def model_version_update(*, version: ModelVersion, description: str) -> ModelVersion:
    version.description = description
    version.updated_at = timezone.now()
    version.save(update_fields=["description", "updated_at"])
    return version


@transaction.atomic
def model_version_transition_stage(
    *, version: ModelVersion, stage: str, archive_existing_versions: bool = False
) -> ModelVersion:
    canonical = STAGES.get((stage or "").lower())
    if canonical is None:
        raise IngestError(f"Invalid Model Version stage: {stage}. Value must be one of {', '.join(STAGES.values())}.")
    now = timezone.now()
    if archive_existing_versions and canonical in ("Staging", "Production"):
        ModelVersion.objects.filter(
            registered_model_id=version.registered_model_id, current_stage=canonical
        ).exclude(pk=version.pk).update(current_stage="Archived", updated_at=now)
    version.current_stage = canonical
    version.updated_at = now
    version.save(update_fields=["current_stage", "updated_at"])
    return version


@transaction.atomic
def model_version_delete(*, version: ModelVersion) -> None:
    """Hard delete as MLflow, dropping aliases that pointed at it."""
    model = RegisteredModel.objects.select_for_update().get(pk=version.registered_model_id)
    if version.version in model.aliases.values():
        model.aliases = {k: v for k, v in model.aliases.items() if v != version.version}
        model.save(update_fields=["aliases"])
    version.delete()
    _touch(model)


@transaction.atomic
def model_version_set_tag(*, version: ModelVersion, key: str, value: Any) -> ModelVersion:
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    version.tags = {**version.tags, **_clean_tags({key: value})}
    version.save(update_fields=["tags"])
    return version


@transaction.atomic
def model_version_delete_tag(*, version: ModelVersion, key: str) -> ModelVersion:
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    version.tags = {k: v for k, v in version.tags.items() if k != key}
    version.save(update_fields=["tags"])
    return version
