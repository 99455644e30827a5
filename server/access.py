"""Who may talk to ``unseen serve`` and what they may make it open: allow-lists, never block-lists.

* **Host**: the request's ``Host`` must name this server (localhost, 127.0.0.1, [::1], the listen
  address, ``security.hosts``), which stops DNS rebinding: a page of ``evil.example`` whose name
  now points at 127.0.0.1 still sends ``Host: evil.example``.
* **Origin** (browsers send it): one of this server's own pages (``http(s)://ALLOWED-HOST:PORT``) or
  ``security.origins``; never compared with the request's own ``Host``.
* **Token**: with ``security.token`` set, every request but ``/healthz/*`` and the static page needs
  ``Authorization: Bearer TOKEN`` (any case of ``bearer``) or ``?token=TOKEN`` (browsers' WebSockets
  cannot set headers); ``/metrics`` also takes ``security.metrics_token``.
* **Sources and outputs** named through the API: URI schemes, hosts or CIDRs and folders from
  ``security.allow`` (default: ``synthetic://`` only).  A refusal says "not allowed", never whether a
  file or host exists.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from .config import LOOPBACK_HOSTS, SecurityConfig
from .protocol import ProtocolError

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https", "srt", "udp", "tcp", "rtmp")
PUBLISH_SCHEMES = ("rtsp", "rtsps")
RECORD_SUFFIXES = (".mp4", ".mkv", ".mov")
_ANY_HOST = ("0.0.0.0", "::", "[::]", "")


def _hostname(netloc: str) -> str:
    """``host[:port]`` (or ``[v6]:port``) -> the host, lower case, brackets kept for IPv6."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


class Access:
    """The checks of one server's security settings (built once; every request goes through it)."""

    def __init__(self, security: SecurityConfig, listen_host: str) -> None:
        self.security = security
        hosts = {h.lower() for h in LOOPBACK_HOSTS} | {h.lower() for h in security.hosts}
        if listen_host.lower() not in _ANY_HOST:
            hosts.add(listen_host.lower() if ":" not in listen_host else f"[{listen_host.strip('[]').lower()}]")
        self.any_host = "*" in hosts
        self.hosts = frozenset(hosts - {"*"})
        self.any_origin = "*" in security.origins
        self.origins = frozenset(o.rstrip("/").lower() for o in security.origins if o != "*")
        self.allow_schemes = frozenset(s.lower().rstrip(":/") for s in security.allow.schemes)
        self.allow_names = frozenset(h.lower() for h in security.allow.hosts if not _is_network(h))
        self.allow_networks = tuple(ipaddress.ip_network(h, strict=False) for h in security.allow.hosts
                                    if _is_network(h))
        self.allow_folders = tuple(Path(os.path.realpath(f)) for f in security.allow.folders)

    # ------------------------------------------------------------------ requests
    def check_host(self, host_header: str | None) -> None:
        if self.any_host:
            return
        if not host_header or _hostname(host_header) not in self.hosts:
            raise ProtocolError("this server does not answer to that Host name; use its address, or add the name "
                                "to security.hosts", 421)

    def check_origin(self, origin: str | None, port: int | None) -> None:
        if origin is None or self.any_origin:
            return  # not a browser (scripts, the python client): the Host check and the token protect those
        parts = urlsplit(origin.strip().lower())
        if origin.strip().lower().rstrip("/") in self.origins:
            return
        own_port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        if parts.scheme in ("http", "https") and _hostname(parts.netloc) in self.hosts and own_port == port:
            return
        raise ProtocolError(f"origin {origin[:100]!r} is not allowed; add it to security.origins", 403)

    def check_token(self, authorization: str | None, query_token: str | None, *, metrics: bool = False) -> None:
        tokens = [t for t in (self.security.token, self.security.metrics_token if metrics else None) if t]
        if not tokens:
            return
        given = query_token or ""
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                given = value.strip()
        if not any(hmac.compare_digest(given.encode(), t.encode()) for t in tokens):
            raise ProtocolError("missing or wrong access token; send 'Authorization: Bearer TOKEN' (or ?token=TOKEN)",
                                401)

    # ------------------------------------------------------------------ what clients may name
    def source(self, uri: str) -> str:
        """A source URI a client named -> the URI to open (files: the resolved absolute path)."""
        scheme = _scheme(uri)
        if scheme not in self.allow_schemes:
            raise _not_allowed("source")
        if scheme in ("synthetic", "whip"):  # they open nothing (whip://: fed by a WHIP publisher)
            return uri
        if scheme == "file":
            return str(self._inside_folders(uri.removeprefix("file://"), "source"))
        self._host_allowed(uri, "source")
        return uri

    def publish(self, url: str) -> str:
        if _scheme(url) not in PUBLISH_SCHEMES:
            raise ProtocolError("publish must be an rtsp:// or rtsps:// URL; give the RTSP server's publish URL")
        self._host_allowed(url, "publish target")
        return url

    def record(self, path: str) -> str:
        if Path(path).suffix.lower() not in RECORD_SUFFIXES:
            raise ProtocolError(f"record must be a {', '.join(RECORD_SUFFIXES)} file; name the recording so")
        return str(self._inside_folders(path, "recording path"))

    def _host_allowed(self, url: str, what: str) -> None:
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            raise _not_allowed(what) from None
        if host in self.allow_names:
            return
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise _not_allowed(what) from None  # names are matched as names, never resolved
        if not any(ip in net for net in self.allow_networks):
            raise _not_allowed(what)

    def _inside_folders(self, path: str, what: str) -> Path:
        if "\x00" in path or not path:
            raise _not_allowed(what)
        resolved = Path(os.path.realpath(path))
        if not any(resolved == f or resolved.is_relative_to(f) for f in self.allow_folders):
            raise _not_allowed(what)
        return resolved


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    if not sep:
        return "file"
    return head.lower()


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return False


def _not_allowed(what: str) -> ProtocolError:
    return ProtocolError(f"{what} not allowed; ask the server's operator to allow it in security.allow "
                         f"(schemes, hosts, folders)", 403)
