"""Notification reads for the bell and the notifications page (fixed query counts)."""

from __future__ import annotations

from django.core.paginator import Page, Paginator

from ..models import Notification, User, Watch

PAGE_SIZE = 50


def unread_count(*, user: User) -> int:
    if not user.is_authenticated:
        return 0
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def notifications_for(*, user: User, unread_only: bool = False, page: int = 1) -> Page:
    qs = Notification.objects.filter(user=user).select_related("actor", "card", "run", "team")
    if unread_only:
        qs = qs.filter(read_at__isnull=True)
    return Paginator(qs.order_by("-created_at", "-id"), PAGE_SIZE).get_page(page)


def notification_for(*, user: User, notification_id: int) -> Notification | None:
    return Notification.objects.filter(user=user, pk=notification_id).first()


def is_watching(*, user: User, card_id: int) -> bool:
    return Watch.objects.filter(user=user, card_id=card_id).exists()
