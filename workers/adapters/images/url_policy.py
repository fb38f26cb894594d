"""Which image URLs may be fetched (SSRF guard).

Only http/https URLs to hosts on ``image_allowed_hosts``; the host is resolved here and every address is
vetted (private, loopback, link-local, multicast, reserved, unspecified, CGNAT, cloud metadata, IPv4
embedded in IPv6) unless ``image_allow_private_addresses`` (tests only; metadata addresses stay refused
even then). The fetcher calls :meth:`UrlPolicy.resolve` inside the connection itself and connects to the
vetted address, so a DNS rebind between check and connect cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from workers.adapters.images.errors import BlockedURL, FetchFailed, FetchTimeout

if TYPE_CHECKING:  # pragma: no cover
    from workers.common.settings import ImageSettings

MAX_REDIRECTS = 3

# Cloud metadata endpoints: refused always, even with image_allow_private_addresses.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "169.254.0.23",  # Tencent Cloud
        "168.63.129.16",  # Azure wireserver (a public address!)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _strip_scope(text: str) -> str:
    return text.split("%", 1)[0]


class UrlPolicy:
    """Which URLs may be fetched: scheme, host allowlist, and the addresses the host resolves to.

    ``allowed_hosts``: comma-separated; ``*`` = any public host; ``example.com`` exact;
    ``*.example.com`` any subdomain (not the apex itself); IP literals compare exactly.
    """

    schemes = ("http", "https")

    def __init__(
        self,
        allowed_hosts: str | Sequence[str] = "*",
        *,
        allow_private: bool = False,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        entries = allowed_hosts.split(",") if isinstance(allowed_hosts, str) else list(allowed_hosts)
        self.allow_private = bool(allow_private)
        self.max_redirects = int(max_redirects)
        self._any = False
        self._exact: set[str] = set()
        self._suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry == "*":
                self._any = True
                continue
            wildcard = entry.startswith("*.")
            name = entry[2:] if wildcard else entry
            literal = _parse_ip_literal(name)
            if literal is not None:
                if wildcard:
                    raise ValueError(f"image_allowed_hosts: wildcard on an IP address: {raw!r}")
                self._exact.add(str(literal))
                continue
            try:
                name = name.encode("idna").decode("ascii") if not name.isascii() else name
            except UnicodeError as exc:
                raise ValueError(f"image_allowed_hosts: invalid host {raw!r}") from exc
            if "*" in name or not all(_LABEL.match(label) for label in name.split(".")):
                raise ValueError(f"image_allowed_hosts: invalid entry {raw!r} (use host, *.domain or *)")
            (self._suffixes.append(name) if wildcard else self._exact.add(name))

    @classmethod
    def from_settings(cls, settings: ImageSettings) -> UrlPolicy:
        return cls(settings.image_allowed_hosts, allow_private=settings.image_allow_private_addresses)

    # -- checks ---------------------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        """The allowlist alone (no address checks)."""
        host = host.lower().rstrip(".")
        literal = _parse_ip_literal(host)
        if literal is not None:
            host = str(literal)
        if self._any or host in self._exact:
            return True
        return any(host.endswith("." + suffix) for suffix in self._suffixes)

    def address_refusal(self, ip: IPAddress | str) -> str | None:
        """Why an address may not be fetched from, or None if it may."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(_strip_scope(ip))
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(_strip_scope(str(ip)))
        if ip in METADATA_ADDRESSES:
            return "cloud metadata address"
        if isinstance(ip, ipaddress.IPv6Address):
            embedded: list[ipaddress.IPv4Address] = []
            if ip.ipv4_mapped is not None:
                embedded.append(ip.ipv4_mapped)
            if ip.sixtofour is not None:
                embedded.append(ip.sixtofour)
            if ip.teredo is not None:
                embedded.append(ip.teredo[1])
            if any(ip in net for net in _NAT64):
                embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            for inner in embedded:
                reason = self.address_refusal(inner)
                if reason is not None:
                    return f"{reason} (embedded in {ip})"
        if self.allow_private:
            return None
        checks = (
            ("unspecified", ip.is_unspecified),
            ("loopback", ip.is_loopback),
            ("link-local", ip.is_link_local),
            ("multicast", ip.is_multicast),
            ("private", ip.is_private),
            ("reserved", ip.is_reserved),
            ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
            ("not globally routable", not ip.is_global),
        )
        for reason, hit in checks:
            if hit:
                return f"{reason} address"
        return None

    def check_host(self, host: str) -> IPAddress | None:
        """Allowlist, host-name and literal-address checks; returns the address for IP literals."""
        host = host.lower()
        name = host.rstrip(".")
        if not name:
            raise BlockedURL("URL has no host")
        literal = _parse_ip_literal(name)
        if literal is None and _LEGACY_IPV4.match(name):
            raise BlockedURL(f"non-canonical IPv4 literal {name!r} refused")
        if literal is None:
            if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
                raise BlockedURL(f"invalid host name {name[:80]!r}")
            if name in METADATA_HOSTS:
                raise BlockedURL(f"cloud metadata host {name!r} refused")
            if not self.allow_private and (name in _LOCAL_NAMES or name.endswith(".localhost")):
                raise BlockedURL(f"local host name {name!r} refused")
        if not self.host_allowed(name):
            raise BlockedURL(f"host {name!r} is not on image_allowed_hosts")
        if literal is not None:
            reason = self.address_refusal(literal)
            if reason is not None:
                raise BlockedURL(f"{literal} refused: {reason}")
        return literal

    def check_url(self, url: str | httpx.URL, *, resolve: bool = True, timeout: float | None = None) -> httpx.URL:
        """Parse and vet a URL; with ``resolve`` also resolve the host and vet every address.

        The fetcher passes resolve=False: its connection resolves and vets again at connect time
        and connects to exactly the vetted address.
        """
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(str(url))
        except Exception as exc:  # noqa: BLE001 - httpx.InvalidURL, TypeError, ...
            raise BlockedURL(f"malformed URL: {type(exc).__name__}") from None
        scheme = parsed.scheme.lower()
        if scheme not in self.schemes:
            raise BlockedURL(f"URL scheme {scheme or '(none)'!r} not allowed (only http, https)")
        if parsed.userinfo:
            raise BlockedURL("URLs with user info (user:password@) are refused")
        try:
            host = parsed.raw_host.decode("ascii")
        except UnicodeDecodeError:
            raise BlockedURL("host is not valid ASCII/IDNA") from None
        port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
        if not 0 < port < 65536:
            raise BlockedURL(f"invalid port {port}")
        literal = self.check_host(host)
        if resolve and literal is None:
            self.resolve(host, port, timeout=timeout)
        return parsed

    def resolve(self, host: str, port: int, *, timeout: float | None = None) -> list[str]:
        """Resolve ``host`` and vet every address; any refused address refuses the host.

        Returns the vetted addresses (as strings, in resolver order) to connect to.
        """
        host = host.lower().rstrip(".") or host
        literal = self.check_host(host)
        if literal is not None:
            return [str(literal)]
        infos = _getaddrinfo(host, port, timeout)
        addresses: list[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = _strip_scope(str(sockaddr[0]))
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                raise BlockedURL(f"{host} resolved to an unparseable address") from None
            reason = self.address_refusal(ip)
            if reason is not None:
                raise BlockedURL(f"{host} resolves to {ip}: {reason}")
            if str(ip) not in addresses:
                addresses.append(str(ip))
        if not addresses:
            raise FetchFailed(f"DNS lookup for {host} returned no usable address")
        return addresses


def _parse_ip_literal(host: str) -> IPAddress | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    text = _strip_scope(text.replace("%25", "%"))
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _getaddrinfo(host: str, port: int, timeout: float | None) -> list[tuple[Any, ...]]:
    """socket.getaddrinfo with a deadline (glibc's resolver cannot be interrupted otherwise)."""

    def lookup() -> list[tuple[Any, ...]]:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)

    if timeout is None:
        try:
            return lookup()
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise FetchFailed(f"DNS lookup for {host} failed: {exc}") from None
    if timeout <= 0:
        raise FetchTimeout(f"deadline passed before DNS lookup of {host}")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = lookup()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    # A daemon thread per lookup: a hung resolver cannot block the caller or interpreter exit.
    worker = threading.Thread(target=run, name="image-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise FetchTimeout(f"DNS lookup for {host} timed out")
    if "error" in box:
        raise FetchFailed(f"DNS lookup for {host} failed: {box['error']}")
    return box["result"]
