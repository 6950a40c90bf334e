"""What an install may read: the install policy, local-path checks, and HTTP sessions that refuse private hosts.

The CLI (and operator preload) is the local user and gets ``InstallPolicy.trusted()``: any local
path, any host. The server gets ``InstallPolicy.for_server(settings)``: local files only under the
allow-listed directories, only public internet addresses, and gallery files must carry a sha256.

Host checks run twice: once when a request is validated (a quick 400 for ``http://127.0.0.1``),
and again inside every new connection (``VettedAdapter``): each address the name resolves to must
be public, and the socket connects to one of exactly those vetted addresses. Redirect hops open
new connections and are vetted the same way, and a name that re-resolves to a private address
between the two checks (DNS rebinding) is refused at connect time.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError

from localai_sd.errors import BlockedSource
from localai_sd.gallery.urls import Source
from localai_sd.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Redirect hops followed per request (each hop's connection is vetted).
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class InstallPolicy:
    """Where an install may read from, and how much its errors may say."""

    #: Any local file or ``file://`` URL may be read (the CLI: the local user).
    any_local_path: bool = True
    #: Otherwise only files whose real path lies under one of these directories.
    local_dirs: tuple[Path, ...] = ()
    #: Loopback, private, link-local, ... addresses may be fetched.
    allow_private_hosts: bool = True
    #: Non-public networks allowed even when ``allow_private_hosts`` is off (programmatic use).
    allowed_networks: tuple[Network, ...] = field(default=())
    #: Every gallery file must carry a sha256.
    require_sha256: bool = False
    #: Error texts may name hosts' answers and local paths (not over HTTP: no port-scan oracle).
    detailed_errors: bool = True

    @classmethod
    def trusted(cls) -> InstallPolicy:
        """The local user's policy (CLI, preload): any path, any host, unverified files allowed."""
        return cls()

    @classmethod
    def for_server(cls, settings: Settings) -> InstallPolicy:
        """The policy of installs requested over HTTP, from the settings."""
        return cls(
            any_local_path=False,
            local_dirs=tuple(Path(os.path.realpath(d)) for d in settings.local_install_dirs),
            allow_private_hosts=settings.allow_private_hosts,
            require_sha256=not settings.allow_unverified_installs,
            detailed_errors=False,
        )

    @property
    def checks_hosts(self) -> bool:
        """True when host addresses must be vetted."""
        return not self.allow_private_hosts

    def address_allowed(self, ip: IPAddress) -> bool:
        """True if connecting to ``ip`` is allowed by this policy."""
        return self.allow_private_hosts or is_public(ip) or any(ip in n for n in self.allowed_networks)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4 or Teredo IPv6 address, if any."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return None


def is_public(ip: IPAddress) -> bool:
    """True for a global unicast address: not loopback, private, link-local, unspecified, multicast or reserved."""
    inner = embedded_ipv4(ip)
    if inner is not None and not is_public(inner):
        return False
    return ip.is_global and not ip.is_multicast


def parse_ip(text: str) -> IPAddress:
    """An address from a sockaddr string (an IPv6 zone ``%eth0`` dropped)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def vetted_addresses(host: str, port: int, policy: InstallPolicy) -> list[str]:
    """Every address ``host`` resolves to, if each one is allowed; else BlockedSource naming the host."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for text in addresses:
        if not policy.address_allowed(parse_ip(text)):
            raise BlockedSource(
                f"host {host!r} resolves to a loopback, private, link-local or reserved address; "
                "installs over the API fetch only public hosts (set ALLOW_PRIVATE_HOSTS to allow them)",
                code="blocked_host",
            )
    return addresses


def check_url_host(url: str, policy: InstallPolicy) -> None:
    """Refuse an http(s) URL whose host resolves to a non-public address (a resolution failure passes here)."""
    if not policy.checks_hosts:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BlockedSource(f"URL {url!r} has an invalid port", code="invalid_url") from None
    try:
        vetted_addresses(host, port, policy)
    except (socket.gaierror, UnicodeError):
        return  # unreachable now; the connection attempt reports it


def check_local(path: Path, policy: InstallPolicy, what: str) -> None:
    """Refuse a local file unless the policy allows any path or its real path is under an allowed dir."""
    if policy.any_local_path:
        return
    real = Path(os.path.realpath(path))
    if any(real == d or d in real.parents for d in policy.local_dirs):
        return
    raise BlockedSource(
        f"{what} is a local file (file:// URL or path); installs over the API read local files only "
        "under the directories allowed by LOCAL_INSTALL_DIRS (--allow-local-dir)",
        code="local_file_refused",
    )


def check_source(source: Source, policy: InstallPolicy, what: str) -> None:
    """Refuse a source the policy does not allow (a local file outside the allow-list, a private host)."""
    if source.path is not None:
        check_local(source.path, policy, what)
    elif source.url is not None:
        check_url_host(source.url, policy)


class _VettedConnectionMixin:
    """Resolve the host, vet every address, then connect to a vetted address only."""

    policy: InstallPolicy = InstallPolicy(allow_private_hosts=False)
    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        """Connect to the first reachable vetted address (the name is resolved once, here)."""
        try:
            addresses = vetted_addresses(self._dns_host, self.port, self.policy)
        except socket.gaierror as exc:
            raise NameResolutionError(self._dns_host, self, exc) from exc  # type: ignore[arg-type]
        name, error = self._dns_host, None
        for address in addresses:
            self._dns_host = address
            try:
                return super()._new_conn()  # type: ignore[misc, no-any-return]
            except OSError as exc:
                error = exc
            finally:
                self._dns_host = name
        assert error is not None
        raise error


def vetted_adapter(policy: InstallPolicy) -> HTTPAdapter:
    """A transport adapter whose connections go only to addresses ``policy`` allows."""

    class Http(_VettedConnectionMixin, HTTPConnection):
        pass

    class Https(_VettedConnectionMixin, HTTPSConnection):
        pass

    Http.policy = Https.policy = policy

    class HttpPool(HTTPConnectionPool):
        ConnectionCls = Http

    class HttpsPool(HTTPSConnectionPool):
        ConnectionCls = Https

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            """The usual pool manager, with vetted connection pools."""
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}

    return Adapter()


def guarded_session(policy: InstallPolicy) -> requests.Session:
    """A requests Session for ``policy``: vetted connections and no environment proxies when hosts are checked."""
    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    if policy.checks_hosts:
        # A proxy from the environment would connect for us, unvetted.
        session.trust_env = False
        adapter = vetted_adapter(policy)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session
