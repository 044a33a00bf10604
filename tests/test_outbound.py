"""The guarded outbound client: internal destinations refused in every spelling, at form-save time, before
the call and again at connect time (DNS rebinding), no redirects, caps and timeouts, no reply text shown.

Only loopback is ever contacted: a fixture makes any socket to another address fail the test."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.urls import reverse

from experiments import outbound
from experiments.errors import DomainError
from experiments.models import DigestDelivery, MlflowSource, StandupDigest
from experiments.services.mlflow_import import MlflowImportError, mlflow_source_sync
from experiments.services.standup import DeliveryError, standup_digest_build, standup_digest_deliver
from experiments.services.teams import (
    mlflow_source_create,
    mlflow_source_update,
    mlflow_token_follows,
    team_settings_clean,
)

PUBLIC = "93.184.216.34"  # what the fake resolver answers as "public"; never actually contacted


class Server:
    """A loopback HTTP server answering every request with (status, headers, body); records paths."""

    def __init__(self, status=200, headers=None, body=b"{}", delay=0.0):
        self.status, self.headers, self.body, self.delay = status, headers or {}, body, delay
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                server.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                time.sleep(server.delay)
                self.send_response(server.status)
                for key, value in server.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda *args: None  # clients that hang up early (timeout, refused peer)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers: list[Server] = []

    def make(**kwargs) -> Server:
        servers.append(Server(**kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Any attempt of the client to open a socket to a non-loopback address fails the test."""
    real = outbound.urllib3_connection.create_connection
    opened: list[str] = []

    def guarded(address, *args, **kwargs):
        host = address[0]
        opened.append(host)
        assert host in ("127.0.0.1", "::1"), f"the client tried to connect to {host}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(outbound.urllib3_connection, "create_connection", guarded)
    return opened


@pytest.fixture
def strict(settings):
    """The production default: nothing internal allowed."""
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    settings.OUTBOUND_ALLOWED_HOSTS = []


REFUSED_HOSTS = [
    "127.0.0.1", "127.0.0.1.", "127.255.1.2", "localhost", "LOCALHOST", "app.localhost", "[::1]",
    "10.0.0.5", "172.16.3.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "0", "[::]",
    "metadata.google.internal", "metadata", "instance-data",
    # encoded IPv4: hex, decimal, octal, short forms
    "0x7f000001", "2130706433", "0177.0.0.1", "127.1", "0x7f.1", "017700000001", "0xa9fea9fe", "2852039166",
    # IPv6: mapped, compatible, 6to4, NAT64 (well-known and local-use prefixes), link-local, ULA, multicast
    "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:169.254.169.254]", "[::127.0.0.1]", "[2002:7f00:1::]",
    "[2002:a9fe:a9fe::1]", "[64:ff9b::7f00:1]", "[64:ff9b::a9fe:a9fe]", "[64:ff9b:1::a00:1]",
    "[fe80::1]", "[fc00::1]", "[fd12:3456::1]", "[ff02::1]", "[2001:db8::1]",
    "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "198.18.0.1", "192.0.2.1",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_internal_destinations_are_refused_in_every_spelling(strict, host, loopback_only):
    url = f"http://{host}:8080/api/2.0/mlflow/experiments/search"
    assert outbound.url_problem(url) is not None, host
    client = outbound.OutboundClient()
    with pytest.raises(outbound.OutboundRefused):
        client.request("GET", url)
    assert loopback_only == []  # refused before any socket was opened


@pytest.mark.parametrize("address", ["10.1.2.3", "127.0.0.1", "169.254.169.254", "::ffff:10.0.0.1", "fd00::7"])
def test_names_that_resolve_to_internal_addresses_are_refused(strict, monkeypatch, address, loopback_only):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    monkeypatch.setattr(outbound, "resolve", lambda host, port: [(family, address)])
    assert "resolves to" in outbound.url_problem("https://mlflow.example.com/")
    with pytest.raises(outbound.OutboundRefused, match="resolves to"):
        outbound.OutboundClient().request("GET", "https://mlflow.example.com/")
    assert loopback_only == []


def test_a_mixed_answer_is_refused_as_a_whole(strict, monkeypatch):
    monkeypatch.setattr(outbound, "resolve", lambda h, p: [(socket.AF_INET, PUBLIC), (socket.AF_INET, "127.0.0.1")])
    assert outbound.url_problem("http://round-robin.example.com/") is not None


def test_public_destinations_and_unresolvable_names_pass_the_form_check(strict, monkeypatch):
    monkeypatch.setattr(outbound, "resolve", lambda host, port: [(socket.AF_INET, PUBLIC)])
    assert outbound.url_problem("https://hooks.slack.com/services/T/B/x") is None
    assert outbound.url_problem(f"http://{PUBLIC}:5000") is None
    assert outbound.url_problem("http://[2606:4700::1111]/") is None

    def nxdomain(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(outbound, "resolve", nxdomain)
    # May resolve where the worker runs; every call checks again.
    assert outbound.url_problem("http://mlflow.corp.example:5000") is None
    assert outbound.url_problem("ftp://example.com/") is not None
    assert outbound.url_problem("http://user:pw@example.com/") is not None


def test_dns_rebinding_is_refused_at_connect_time(strict, monkeypatch, server, loopback_only):
    """The first lookup (the pre-check) answers a public address, the next one 127.0.0.1."""
    target = server()
    answers = iter([[(socket.AF_INET, PUBLIC)]])
    lookups: list[str] = []

    def rebinding(host, port):
        lookups.append(host)
        return next(answers, [(socket.AF_INET, "127.0.0.1")])

    monkeypatch.setattr(outbound, "resolve", rebinding)
    url = f"http://rebind.example.com:{target.port}/hook"
    assert outbound.url_problem(url) is None  # the form check saw the public answer
    with pytest.raises(outbound.OutboundRefused, match="loopback"):
        outbound.OutboundClient().request("POST", url, json={"x": 1})
    assert len(lookups) == 2 and target.paths == [] and loopback_only == []


def test_the_socket_peer_is_checked_too(strict, monkeypatch, server, loopback_only):
    """Even when every answer is public, a connection that lands on loopback (e.g. NAT) is refused."""
    target = server()
    monkeypatch.setattr(outbound, "resolve", lambda host, port: [(socket.AF_INET, PUBLIC)])
    real = socket.create_connection
    monkeypatch.setattr(outbound.urllib3_connection, "create_connection",
                        lambda address, *a, **k: real(("127.0.0.1", target.port), *a[:1]))
    with pytest.raises(outbound.OutboundRefused, match="connection reached a loopback"):
        outbound.OutboundClient().request("GET", f"http://public.example.com:{target.port}/")
    assert target.paths == []  # refused before the request was written


def test_redirects_are_not_followed(server, loopback_only):
    target = server(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    with pytest.raises(outbound.OutboundRefused, match="HTTP 302 Found; redirects are not followed"):
        outbound.OutboundClient().request("GET", target.url + "/start")
    assert target.paths == ["/start"] and loopback_only == ["127.0.0.1"]


def test_allowlist_reaches_a_named_private_server(settings, server):
    target = server(body=b'{"ok": true}')
    settings.OUTBOUND_ALLOWED_NETWORKS, settings.OUTBOUND_ALLOWED_HOSTS = [], []
    with pytest.raises(outbound.OutboundRefused):
        outbound.OutboundClient().request("GET", target.url)
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert outbound.OutboundClient().request("GET", target.url).json() == {"ok": True}
    assert outbound.url_problem(target.url) is None
    settings.OUTBOUND_ALLOWED_NETWORKS = ["10.0.0.0/8"]  # another network does not cover loopback
    assert outbound.url_problem(target.url) is not None
    settings.OUTBOUND_ALLOWED_NETWORKS, settings.OUTBOUND_ALLOWED_HOSTS = [], ["localhost"]
    assert outbound.OutboundClient().request("GET", f"http://localhost:{target.port}/").status == 200
    settings.OUTBOUND_ALLOWED_HOSTS = [".corp.example"]
    assert outbound.host_allowlisted("mlflow.corp.example") and not outbound.host_allowlisted("corp.example.evil")


def test_reply_size_is_capped(server):
    target = server(body=b"x" * 300_000)
    with pytest.raises(outbound.OutboundError, match="larger than 100000 bytes"):
        outbound.OutboundClient(max_bytes=100_000).request("GET", target.url)
    assert len(outbound.OutboundClient(max_bytes=400_000).request("GET", target.url).content) == 300_000


def test_a_slow_server_times_out(server):
    target = server(delay=2.0)
    started = time.monotonic()
    with pytest.raises(outbound.OutboundError, match=r"did not answer within 0\.5s"):
        outbound.OutboundClient(read_timeout=0.5).request("GET", target.url)
    assert time.monotonic() - started < 1.9


def test_environment_proxies_are_ignored(server, monkeypatch):
    target = server()
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("http_proxy", "http://10.9.9.9:3128")
    assert outbound.OutboundClient().request("GET", target.url).status == 200


# --- Form-save validation -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["http://169.254.169.254/latest", "http://0x7f000001:5000", "http://[::ffff:10.0.0.1]/"])
def test_webhook_and_source_forms_refuse_internal_urls(strict, team, url):
    _clean, errors = team_settings_clean({"webhook_url": url})
    assert "Internal addresses are refused" in errors["webhook_url"]
    with pytest.raises(DomainError) as exc:
        mlflow_source_create(team=team, name="metadata", tracking_uri=url)
    assert exc.value.field == "tracking_uri" and "Internal addresses are refused" in exc.value.message


@pytest.mark.django_db
def test_settings_page_shows_the_field_error(strict, client_for, team, manager):
    from tests.test_team_views import _settings_post

    response = client_for(manager).post(reverse("team_settings", args=[team.slug]),
                                        _settings_post(webhook_url="http://2130706433/hook"))
    assert response.status_code == 400
    assert "2130706433 is a loopback address" in response.content.decode()
    response = client_for(manager).post(reverse("team_mlflow_sources", args=[team.slug]),
                                        {"name": "x", "tracking_uri": "http://10.1.1.1:5000", "enabled": "on"})
    assert response.status_code == 400 and "10.1.1.1 is a private address" in response.content.decode()
    assert not MlflowSource.objects.exists()


# --- No reply text in the UI ----------------------------------------------------------------------

LEAK = b"<h1>internal admin</h1> SECRET-REPLY-BODY db_password=hunter2"


@pytest.mark.django_db
def test_digest_page_shows_status_not_reply_body(team, board, manager, client_for, server):
    from django.utils import timezone

    hook = server(status=500, body=LEAK)
    team.webhook_url = hook.url + "/hook"
    team.save()
    digest = standup_digest_build(team=team, window_end=timezone.now().replace(microsecond=0))
    with pytest.raises(DeliveryError, match="HTTP 500 Internal Server Error"):
        standup_digest_deliver(digest=digest)
    digest.refresh_from_db()
    assert "SECRET" not in digest.webhook_error and "HTTP 500" in digest.webhook_error
    html = client_for(manager).get(reverse("standup_digest_detail", args=[team.slug, digest.pk])).content.decode()
    assert "HTTP 500 Internal Server Error" in html and "SECRET-REPLY-BODY" not in html
    delivery = DigestDelivery.objects.get(digest=digest, channel="webhook")
    assert delivery.sent_at is None and delivery.attempts == 1 and StandupDigest.objects.get().webhook_sent_at is None


@pytest.mark.django_db
def test_source_page_shows_status_not_reply_body(team, manager, client_for, server):
    upstream = server(status=500, body=LEAK)
    source = mlflow_source_create(team=team, name="prod", tracking_uri=upstream.url)
    with pytest.raises(MlflowImportError):
        mlflow_source_sync(source=source)
    source.refresh_from_db()
    assert "HTTP 500 Internal Server Error" in source.last_error and "SECRET" not in source.last_error
    html = client_for(manager).get(reverse("team_mlflow_sources", args=[team.slug])).content.decode()
    assert "HTTP 500 Internal Server Error" in html and "SECRET-REPLY-BODY" not in html


@pytest.mark.django_db
def test_mlflow_error_message_is_not_shown_only_its_code(team, server):
    upstream = server(status=400, body=b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "SECRET-REPLY-BODY"}')
    source = mlflow_source_create(team=team, name="prod", tracking_uri=upstream.url)
    with pytest.raises(MlflowImportError) as exc:
        mlflow_source_sync(source=source)
    assert "INVALID_PARAMETER_VALUE" in exc.value.message and "SECRET" not in exc.value.message


# --- A stored token does not follow the URI to another host ---------------------------------------


def test_token_follows_only_the_same_origin():
    assert mlflow_token_follows("https://mlflow.example.com", "https://mlflow.example.com/prefix")
    assert mlflow_token_follows("https://mlflow.example.com", "https://MLFLOW.example.com:443/")
    assert not mlflow_token_follows("https://mlflow.example.com", "https://evil.example.net")
    assert not mlflow_token_follows("https://mlflow.example.com", "http://mlflow.example.com")
    assert not mlflow_token_follows("https://mlflow.example.com", "https://mlflow.example.com:8443")


@pytest.mark.django_db
def test_token_is_dropped_when_the_host_changes(team):
    source = mlflow_source_create(team=team, name="prod", tracking_uri="https://mlflow.example.com", token="tok-1")
    mlflow_source_update(source=source, tracking_uri="https://mlflow.example.com/v2")
    source.refresh_from_db()
    assert source.token == "tok-1"  # same server, another path
    mlflow_source_update(source=source, tracking_uri="https://collector.example.net")
    source.refresh_from_db()
    assert source.token == "" and source.tracking_uri == "https://collector.example.net"
    mlflow_source_update(source=source, tracking_uri="https://mlflow.example.com", token="tok-2")
    source.refresh_from_db()
    assert source.token == "tok-2"  # a new token given with the new host is kept


@pytest.mark.django_db
def test_edit_form_drops_the_token_and_says_so(client_for, team, manager):
    source = mlflow_source_create(team=team, name="prod", tracking_uri="https://mlflow.example.com", token="tok-1")
    response = client_for(manager).post(
        reverse("team_mlflow_source_edit", args=[team.slug, source.pk]),
        {"name": "prod", "tracking_uri": "https://attacker.example.org", "token": "", "enabled": "on"},
        follow=True,
    )
    assert response.status_code == 200
    assert "The stored token was removed because the server changed" in response.content.decode()
    source.refresh_from_db()
    assert source.token == ""


@pytest.mark.django_db
def test_import_command_source_drops_the_token_on_another_host(team):
    from experiments.services.mlflow_import import mlflow_source_upsert

    source = mlflow_source_upsert(team=team, name="cli", tracking_uri="https://mlflow.example.com", token="tok")
    mlflow_source_upsert(team=team, name="cli", tracking_uri="https://mlflow.example.com/")
    assert MlflowSource.objects.get(pk=source.pk).token == "tok"
    mlflow_source_upsert(team=team, name="cli", tracking_uri="https://elsewhere.example.net")
    assert MlflowSource.objects.get(pk=source.pk).token == ""


@pytest.mark.django_db
def test_import_command_refuses_internal_uris(strict, team):
    from experiments.services.mlflow_import import mlflow_source_upsert

    with pytest.raises(DomainError, match="loopback"):
        mlflow_source_upsert(team=team, name="cli", tracking_uri="http://127.1:5000")
