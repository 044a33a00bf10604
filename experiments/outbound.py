"""The one guarded client for every outbound HTTP call (team webhook, MLflow import, artifacts).

Against server-side request forgery:
- the host is resolved and every address must be public: loopback, private, link-local, multicast,
  reserved, unspecified and other non-global ranges are refused, for IPv4 and IPv6, including IPv4
  embedded in IPv6 (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, 6to4, Teredo, NAT64) and
  the numeric spellings inet_aton accepts (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``);
- the check is repeated at connect time by the connection itself, which resolves once, vets the
  answer and connects to that vetted address (Host header and TLS SNI keep the name), then checks the
  socket's peer address, so a DNS answer that changes between check and connect (rebinding) is refused;
- redirects are never followed (a 3xx is an error), environment proxies are ignored;
- connect/read timeouts, an overall deadline, and a cap on the reply size (decoded bytes);
- errors carry a status code and a short reason of our own wording, never text from the reply.

``OUTBOUND_ALLOWED_HOSTS`` (names, ``.suffix`` for subdomains) and ``OUTBOUND_ALLOWED_NETWORKS``
(CIDRs) let an on-prem deployment reach named private servers; both are empty by default.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from .errors import DomainError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that point at the machine itself or at cloud metadata services, refused even before
# they resolve (at form-save time the deployment's resolver may not be the one that will send).
BLOCKED_NAMES = frozenset({
    "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback",
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
})
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class OutboundError(DomainError):
    """An outbound call failed; `message` is short and safe to show (no reply body)."""

    status_code = 502
    code = "outbound_failed"

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status


class OutboundRefused(OutboundError):
    """The destination is not allowed (internal address, bad scheme, redirect)."""

    status_code = 400
    code = "outbound_refused"


# --- Policy -----------------------------------------------------------------------------------------


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for item in getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", []) or []:
        networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
    return networks


def host_allowlisted(host: str) -> bool:
    """A host named in OUTBOUND_ALLOWED_HOSTS (exactly, or under a ".suffix" entry)."""
    host = host.lower().rstrip(".")
    for entry in getattr(settings, "OUTBOUND_ALLOWED_HOSTS", []) or []:
        entry = str(entry).strip().lower().rstrip(".")
        if not entry:
            continue
        if host == entry or (entry.startswith(".") and (host.endswith(entry) or host == entry[1:])):
            return True
    return False


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in prefix for prefix in NAT64_PREFIXES) or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _kind(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "an unspecified"
    if ip.is_loopback:
        return "a loopback"
    if ip.is_link_local:
        return "a link-local"
    if ip.is_multicast:
        return "a multicast"
    if ip.is_private:
        return "a private"
    if ip.is_reserved:
        return "a reserved"
    if not ip.is_global:
        return "a non-public"
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why `ip` may not be contacted ("a loopback address"), or None when it may."""
    allowed = _allowed_networks()
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates += _embedded_ipv4(ip)
    for candidate in candidates:
        if candidate is not ip and any(candidate.version == n.version and candidate in n for n in allowed):
            continue
        kind = _kind(candidate)
        if kind:
            return f"{kind} address" + (" (embedded in IPv6)" if candidate is not ip else "")
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, in any spelling inet_aton or inet_pton accepts."""
    text = host.strip().strip("[]").rstrip(".").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text) and text[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def resolve(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) pairs for `host`; tests replace this to simulate DNS answers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, str(sockaddr[0])) for family, _type, _proto, _name, sockaddr in infos]


def _vetted(host: str, port: int) -> list[tuple[int, str]]:
    """Resolve and vet: every answer must pass (a mixed answer is refused as a whole)."""
    name = host.strip("[]").lower().rstrip(".")
    allowlisted = host_allowlisted(name)
    if not allowlisted and (name in BLOCKED_NAMES or name.endswith(".localhost")):
        raise OutboundRefused(f"{name} is an internal host name.")
    literal = literal_address(name)
    if literal is not None and not allowlisted:
        problem = address_problem(literal)
        if problem:
            raise OutboundRefused(f"{name} is {problem}.")
    try:
        answers = resolve(str(literal) if literal is not None else name, port)
    except (socket.gaierror, UnicodeError):
        raise OutboundError(f"{name}: the host name does not resolve.") from None
    if not answers:
        raise OutboundError(f"{name}: the host name does not resolve.")
    if not allowlisted:
        for _family, address in answers:
            problem = address_problem(ipaddress.ip_address(address.split("%", 1)[0]))
            if problem:
                raise OutboundRefused(f"{name} resolves to {problem}.")
    return answers


def url_problem(url: str, *, resolve_host: bool = True) -> str | None:
    """For form validation: why `url` may not be called, or None. A name that does not resolve here
    is accepted (it may resolve where the worker runs); it is checked again on every call."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "The URL is not valid."
    if parts.scheme not in ("http", "https"):
        return "Only http:// and https:// URLs can be called."
    host = parts.hostname or ""
    if not host:
        return "The URL has no host."
    if parts.username or parts.password:
        return "Put credentials in the token field, not in the URL."
    try:
        if resolve_host:
            _vetted(host, port or (443 if parts.scheme == "https" else 80))
        else:
            name = host.lower().rstrip(".")
            literal = literal_address(name)
            if not host_allowlisted(name):
                if name in BLOCKED_NAMES or name.endswith(".localhost"):
                    return f"{name} is an internal host name."
                problem = address_problem(literal) if literal is not None else None
                if problem:
                    return f"{name} is {problem}."
    except OutboundRefused as exc:
        return f"{exc.message} Internal addresses are refused unless listed in OUTBOUND_ALLOWED_HOSTS/NETWORKS."
    except OutboundError:
        return None
    return None


# --- Connections that vet the address they connect to -------------------------------------------------


class _GuardedConnectionMixin:
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        host = self._dns_host  # type: ignore[attr-defined]
        answers = _vetted(host, self.port)  # raises OutboundRefused: propagates unwrapped to the caller
        allowlisted = host_allowlisted(host.strip("[]"))
        last: Exception | None = None
        for _family, address in answers:
            try:
                sock = urllib3_connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from exc
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
            except OSError as exc:
                last = exc
                continue
            peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
            problem = None if allowlisted else address_problem(peer)
            if problem:
                sock.close()
                raise OutboundRefused(f"{self.host}: the connection reached {problem}.")
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {last}")  # type: ignore[arg-type]


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool,
        }

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        raise OutboundRefused("Outbound calls do not go through proxies.")


# --- Client -------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.content)


def status_text(status: int) -> str:
    """'HTTP 503 Service Unavailable': the standard phrase, never the server's own reason text."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


@dataclass
class OutboundClient:
    """A pooled session whose every connection is vetted. Use one per remote server and task."""

    headers: dict[str, str] = field(default_factory=dict)
    connect_timeout: float | None = None
    read_timeout: float | None = None
    deadline: float | None = None  # seconds for one whole call, reading included
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        self.connect_timeout = self.connect_timeout or settings.OUTBOUND_CONNECT_TIMEOUT
        self.read_timeout = self.read_timeout or settings.OUTBOUND_READ_TIMEOUT
        self.deadline = self.deadline or settings.OUTBOUND_DEADLINE
        self.max_bytes = self.max_bytes or settings.OUTBOUND_MAX_RESPONSE_BYTES
        self.session = requests.Session()
        self.session.trust_env = False  # HTTP(S)_PROXY and .netrc would bypass or leak
        adapter = GuardedAdapter(max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": "mlboard", **self.headers})

    def close(self) -> None:
        self.session.close()

    @contextmanager
    def stream(self, method: str, url: str, **kwargs: Any) -> Iterator[requests.Response]:
        """The raw response, headers read, body not yet; 3xx refused. Read it with `iter_body`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutboundRefused("Only http:// and https:// URLs can be called.")
        host = parts.hostname
        try:
            response = self.session.request(
                method, url, stream=True, allow_redirects=False,
                timeout=(self.connect_timeout, self.read_timeout), **kwargs,
            )
        except OutboundError:
            raise
        except requests.Timeout:
            raise OutboundError(f"{host} did not answer within {self.read_timeout:g}s.") from None
        except requests.exceptions.SSLError:
            raise OutboundError(f"{host}: the TLS handshake failed.") from None
        except requests.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else "cannot connect"
            if "resolve" in str(exc).lower() or "Name or service" in str(exc):
                reason = "the host name does not resolve"
            raise OutboundError(f"{host}: {reason}.") from None
        except requests.RequestException:
            raise OutboundError(f"{host}: the request failed.") from None
        try:
            if 300 <= response.status_code < 400:
                raise OutboundRefused(
                    f"{host} answered {status_text(response.status_code)}; redirects are not followed.",
                    status=response.status_code,
                )
            yield response
        finally:
            response.close()

    def iter_body(self, response: requests.Response, *, max_bytes: int | None = None,
                  chunk_size: int = 1 << 16, deadline: float | None = None) -> Iterator[bytes]:
        """The decoded body in chunks, stopping at `max_bytes` and at the deadline."""
        limit = max_bytes or self.max_bytes or 0
        deadline = deadline or self.deadline
        host = urlsplit(response.url).hostname or "the server"
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise OutboundError(f"{host}: the reply is larger than {limit} bytes.", status=response.status_code)
        started, total = time.monotonic(), 0
        try:
            for chunk in response.iter_content(chunk_size):
                total += len(chunk)
                if total > limit:
                    raise OutboundError(f"{host}: the reply is larger than {limit} bytes.", status=response.status_code)
                if deadline and time.monotonic() - started > deadline:
                    raise OutboundError(f"{host}: the reply took longer than {deadline:g}s.")
                yield chunk
        except requests.RequestException:
            raise OutboundError(f"{host}: the connection broke while reading the reply.") from None

    def request(self, method: str, url: str, *, max_bytes: int | None = None, **kwargs: Any) -> Reply:
        """One call, body read whole (capped). Raises OutboundError/OutboundRefused with a safe message."""
        with self.stream(method, url, **kwargs) as response:
            content = b"".join(self.iter_body(response, max_bytes=max_bytes))
            return Reply(status=response.status_code, headers=dict(response.headers), content=content)


def post_json(url: str, payload: Any, *, headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
    """POST JSON once and require a 2xx; the error names only the status."""
    client = OutboundClient(headers=headers or {}, read_timeout=timeout, deadline=timeout)
    try:
        reply = client.request("POST", url, json=payload)
    finally:
        client.close()
    if not 200 <= reply.status < 300:
        host = urlsplit(url).hostname
        raise OutboundError(f"{host} answered {status_text(reply.status)}.", status=reply.status)
    return reply
