"""django-axes' backend, tolerant of authenticate() calls without a request (shell, test client login):
those cannot come from the network, so there is no address to lock and nothing to check."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class AxesBackend(AxesStandaloneBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
