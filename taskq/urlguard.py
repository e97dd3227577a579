"""Outbound HTTP that refuses private, loopback, link-local and reserved addresses.

Shared by the ``http_request`` task type and webhooks; flask-free. The host is
resolved once and *every* address it resolves to must be public; the socket
then connects to one of those checked addresses, so a DNS answer that changes
between the check and the connect (rebinding) cannot slip through. Redirects
are never followed: a 3xx is returned as it is.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1024 * 1024
# RFC 9110: a header name is a token; a value is visible characters, spaces and tabs
# (and obs-text, which http.client sends as latin-1), never CR, LF, NUL or other controls.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEADER_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")
# Headers http.client writes from the request itself: one given as well breaks the framing.
FRAMING_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "trailer", "upgrade"}
)
PRIVATE_REFUSED = "private and loopback addresses are not allowed"


class UnsafeURLError(ValueError):
    """The URL is malformed or points at an address outbound calls may not reach."""


def is_public_address(address: str) -> bool:
    """True when ``address`` (an IP literal) is a global unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; UnsafeURLError when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"malformed URL: {exc}") from None
    if parts.scheme not in {"http", "https"}:
        raise UnsafeURLError("only http and https URLs are allowed")
    if not parts.hostname:
        raise UnsafeURLError("the URL has no host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def literal_address(host: str) -> str | None:
    """The IP address ``host`` spells without DNS, or None for a name.

    Besides the usual forms, the shorthands the resolver takes as IPv4 addresses
    (``127.1``, ``2130706433``, ``0x7f.0.0.1``) count as the address they name.
    """
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def literal_host_error(url: str, allow_private: bool = False) -> str | None:
    """Why ``url`` is refused without a DNS lookup (bad shape, private IP literal), or None.

    Cheap enough for request validation, and the one check of every URL a client
    gives for outbound calls (``http_request``'s url, ``callback_url``); the full
    check happens at connect time.
    """
    try:
        _, host, _ = split_url(url)
    except UnsafeURLError as exc:
        return str(exc)
    if allow_private:
        return None
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return PRIVATE_REFUSED
    address = literal_address(name)
    if address is None or is_public_address(address):
        return None
    return PRIVATE_REFUSED


def header_error(name: str, value: str) -> str | None:
    """Why an outbound request header a client gives is refused, or None.

    http.client refuses CR, LF and non-latin-1 text only when it sends, so a bad
    header stored at create would fail every attempt; this refuses it up front.
    """
    if not HEADER_NAME.fullmatch(name):
        return f"Header name {name[:64]!r} is not an HTTP token."
    if name.lower() in FRAMING_HEADERS:
        return f"Header {name!r} is set by the request itself."
    if not HEADER_VALUE.fullmatch(value):
        return f"Header {name!r}: a value is printable latin-1 text, no CR, LF or other controls."
    return None


def resolve_public(host: str, port: int, allow_private: bool = False) -> list[tuple]:
    """getaddrinfo results for host:port, all checked; UnsafeURLError if any is private."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeURLError(f"cannot resolve {host}: {exc.strerror}") from None
    if not allow_private:
        for info in infos:
            if not is_public_address(info[4][0]):
                raise UnsafeURLError(
                    f"{host} resolves to {info[4][0]}: private and loopback addresses "
                    "are not allowed (TASKQ_ALLOW_PRIVATE_URLS)"
                )
    return infos


def guarded_connection(allow_private: bool):
    """A socket.create_connection replacement that connects only to checked addresses."""

    def create_connection(address, timeout=None, source_address=None, **kwargs):
        host, port = address
        last_error: OSError | None = None
        for family, type_, proto, _, sockaddr in resolve_public(host, port, allow_private):
            sock = socket.socket(family, type_, proto)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last_error = exc
        raise last_error or OSError(f"cannot connect to {host}:{port}")

    return create_connection


@dataclass
class Response:
    """What came back: status, headers, body (at most MAX_BODY_BYTES) and duration."""

    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float

    def text(self) -> str:
        """The body decoded as UTF-8, undecodable bytes replaced."""
        return self.body.decode("utf-8", errors="replace")


def fetch(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    allow_private: bool = False,
) -> Response:
    """One HTTP request through the guard (``allow_private``: TASKQ_ALLOW_PRIVATE_URLS);
    redirects are returned, not followed. ``timeout`` bounds the whole call (TimeoutError)."""
    scheme, host, port = split_url(url)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout)
    connect = guarded_connection(allow_private)
    opened: list[socket.socket] = []  # the response may outlive conn.sock (Connection: close)

    def create_connection(*args, **kwargs):
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    conn._create_connection = create_connection  # type: ignore[attr-defined]
    started = time.perf_counter()
    # ``timeout`` bounds each socket operation; a server dripping a byte just in time
    # would stretch the whole call without end, so at ``timeout`` the socket is shut.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    deadline = threading.Timer(timeout, expire)
    deadline.daemon = True
    deadline.start()
    try:
        try:
            conn.request(method.upper(), target, body=body, headers=headers or {})
            if conn.sock is not None:  # over https, the TLS socket that replaced the raw one
                opened.append(conn.sock)
            reply = conn.getresponse()
            data = reply.read(MAX_BODY_BYTES)
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise TimeoutError(f"no complete answer within {timeout:g}s") from None
            raise
        if expired.is_set():  # a body read to EOF ends quietly when the socket is shut
            raise TimeoutError(f"no complete answer within {timeout:g}s")
        return Response(
            status=reply.status,
            headers={k: v for k, v in reply.getheaders()},
            body=data,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )
    finally:
        deadline.cancel()
        conn.close()
