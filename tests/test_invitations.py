"""Invitations by email: a manager invites an address with a role from the members page; the link
lets the invitee choose a username and password and join with that role, once, before it expires."""

from __future__ import annotations

import re

from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from experiments.models import Invitation, Membership, Role, User


def _invite(client: Client, team, email: str, role: str = Role.VIEWER, **extra):
    return client.post(reverse("team_member_invite", args=[team.slug]),
                       {"invite-email": email, "invite-role": role}, **extra)


def _link(message) -> str:
    return re.search(r"https?://[^/\s]+(/invitations/\S+/)", message.body).group(1)


def test_manager_invites_and_invitee_joins_with_the_role(team, manager, client_for, django_capture_on_commit_callbacks):
    client = client_for(manager)
    assert b"Invite by email" in client.get(reverse("team_members", args=[team.slug])).content
    with django_capture_on_commit_callbacks(execute=True):
        response = _invite(client, team, "newbie@example.com", Role.VIEWER)
    assert response.status_code == 302
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["newbie@example.com"]
    invitation = Invitation.objects.get()
    link = _link(mail.outbox[0])
    assert invitation.digest not in link  # only the digest is stored

    guest = Client()
    page = guest.get(link)
    assert page.status_code == 200 and b"Join" in page.content and b"Vision" in page.content
    bad = guest.post(link, {"username": "newbie", "password1": "Long-enough-42", "password2": "other"})
    assert bad.status_code == 400 and b"differ" in bad.content
    joined = guest.post(link, {"username": "newbie", "password1": "Long-enough-42", "password2": "Long-enough-42"})
    assert joined.status_code == 302
    user = User.objects.get(username="newbie")
    assert user.email == "newbie@example.com" and user.check_password("Long-enough-42")
    assert Membership.objects.get(team=team, user=user).role == Role.VIEWER
    assert guest.get(reverse("team_members", args=[team.slug])).status_code == 200  # logged in, on the team
    assert Client().get(link).status_code == 404  # single use
    assert Client().post(link, {"username": "again", "password1": "Long-enough-42",
                                "password2": "Long-enough-42"}).status_code == 404


def test_members_cannot_invite(team, member, client_for):
    assert _invite(client_for(member), team, "x@example.com").status_code == 403
    assert not Invitation.objects.exists()


def test_invalid_invitations_are_explained(team, manager, member, client_for):
    client = client_for(manager)
    bad = _invite(client, team, "not-an-email")
    assert bad.status_code == 400 and b"valid email" in bad.content
    taken = _invite(client, team, member.email)
    assert taken.status_code == 400 and b"already on" in taken.content


def test_expired_invitation_does_not_work(team, manager, client_for, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        _invite(client_for(manager), team, "late@example.com")
    Invitation.objects.update(expires_at=timezone.now() - timezone.timedelta(minutes=1))
    page = Client().get(_link(mail.outbox[0]))
    assert page.status_code == 404 and b"no longer works" in page.content


def test_taken_username_and_weak_password_are_refused(team, manager, member, client_for,
                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        _invite(client_for(manager), team, "n2@example.com")
    link = _link(mail.outbox[0])
    taken = Client().post(link, {"username": member.username, "password1": "Long-enough-42",
                                 "password2": "Long-enough-42"})
    assert taken.status_code == 400 and b"already exists" in taken.content
    weak = Client().post(link, {"username": "n2", "password1": "password", "password2": "password"})
    assert weak.status_code == 400 and b"too common" in weak.content.lower()
    assert not User.objects.filter(username="n2").exists()
