"""Domain errors raised by services; views and the API turn them into clear messages."""

from __future__ import annotations


class DomainError(Exception):
    """Base for expected, user-facing failures."""

    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConflictError(DomainError):
    """Stale write: someone changed the object since it was read."""

    status_code = 409
    code = "conflict"

    def __init__(self, message: str, *, current_version: int | None = None) -> None:
        super().__init__(message)
        self.current_version = current_version


class PermissionDeniedError(DomainError):
    status_code = 403
    code = "permission_denied"


class WipLimitError(DomainError):
    """A person's move onto a column at its WIP limit when the team's limits are strict: ask first."""

    status_code = 409
    code = "wip_limit"


class WriterRefused(Exception):
    """A write that trusted a caller read a few seconds earlier found in the database that the token
    may no longer write there (revoked, user deactivated or left the team, now a viewer, or the run
    deleted): nothing was stored, and the request must authenticate afresh."""
