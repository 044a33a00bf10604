"""Invitations by email: a manager invites an address with a role; the link lets someone without an
account choose a username and password and join the team. Single use, expiring, stored as a digest."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from ..errors import DomainError
from ..models import Invitation, Role, Team, User
from .boards import membership_set

INVITATION_DAYS = 7


def invitation_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def invitation_link(secret: str) -> str:
    return settings.SITE_URL + reverse("invitation_accept", kwargs={"secret": secret})


@transaction.atomic
def invitation_create(*, team: Team, email: str, role: str, actor: User | None) -> tuple[Invitation, str]:
    """Store the invitation and email its link (sent after commit). Returns the row and the secret."""
    email = (email or "").strip()
    try:
        validate_email(email)
    except ValidationError:
        raise DomainError("Enter a valid email address.", field="email") from None
    if role not in Role.values:
        raise DomainError(f"Unknown role {role!r}; use one of {', '.join(Role.values)}.", field="role")
    if team.memberships.filter(user__email__iexact=email).exists():
        raise DomainError(f"Someone with {email} is already on {team.name}.", field="email")
    secret = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        team=team, email=email, role=role, digest=invitation_digest(secret), invited_by=actor,
        expires_at=timezone.now() + dt.timedelta(days=INVITATION_DAYS),
    )
    inviter = str(actor) if actor else "A manager"
    body = (
        f"{inviter} invited you to the team {team.name} on mlboard as {invitation.get_role_display().lower()}.\n\n"
        f"Choose a username and password here (the link works once, for {INVITATION_DAYS} days):\n"
        f"{invitation_link(secret)}\n"
    )
    transaction.on_commit(lambda: send_mail(f"Join {team.name} on mlboard", body, None, [email]))
    return invitation, secret


@transaction.atomic
def invitation_accept(*, secret: str, username: str, password: str) -> User:
    """Create the account and the membership with the invited role; the link is spent."""
    invitation = Invitation.objects.select_for_update().filter(digest=invitation_digest(secret)).first()
    if (
        invitation is None or invitation.accepted_at is not None or invitation.revoked_at is not None
        or invitation.expires_at <= timezone.now()
    ):
        raise DomainError("This invitation link was used already, was withdrawn or has expired; ask for a new one.")
    username = (username or "").strip()
    if not username:
        raise DomainError("Choose a username.", field="username")
    user = User(username=username, email=invitation.email)
    try:
        user.full_clean(exclude=["password"])
    except ValidationError as exc:
        field, errors = next(iter(exc.message_dict.items()))
        raise DomainError(" ".join(errors), field="username" if field == "username" else None) from None
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise DomainError(" ".join(exc.messages), field="password") from None
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise DomainError("That username is taken; choose another.", field="username") from None
    membership_set(team=invitation.team, user=user, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    return user
