"""Reads of invitations."""

from __future__ import annotations

from django.utils import timezone

from ..models import Invitation
from ..services.invitations import invitation_digest


def invitation_for(*, secret: str) -> Invitation | None:
    """The open invitation for a link's secret: not used, not revoked, not expired."""
    return (
        Invitation.objects.select_related("team")
        .filter(digest=invitation_digest(secret), accepted_at__isnull=True, revoked_at__isnull=True)
        .filter(expires_at__gt=timezone.now())
        .first()
    )
