"""Which URLs the browser may open.

Protects against: schemes other than http(s) (`file:`, `javascript:`, `data:`, ...), and
requests into the machine's own networks (loopback, private, link-local, carrier-grade NAT,
multicast, reserved), judged on every address the host name resolves to, so a public name
pointing at 127.0.0.1 is refused too. The fetcher connects to the address that was checked
(no second lookup to rebind), checks each redirect hop again, and the browser checks every
sub-request it makes. Tests and local setups pass `allow_private_network=True`.

    >>> UrlPolicy().check("file:///etc/passwd")
    Traceback (most recent call last):
    ...
    tools.builtin.browser.page.BrowseError: only http and https URLs can be opened, not file:///etc/passwd
    >>> UrlPolicy(allow_private_network=True).check("http://127.0.0.1:8000/a")[1]
    ['127.0.0.1']
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from tools.builtin.browser.page import BrowseError

__all__ = ["UrlPolicy"]

# getaddrinfo cannot be cancelled; a pool bounds how long a lookup may hold a call. A lookup that
# stalls holds its thread until the system resolver gives up (seconds), so the pool is wide
# enough that a page naming a few such hosts does not queue every other lookup behind them.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="browser-dns")


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class UrlPolicy:
    allow_private_network: bool = False
    dns_timeout: float = 5.0

    def check(self, url: str) -> tuple[str, list[str]]:
        """Return (host, addresses to connect to) for an allowed URL; raise BrowseError otherwise."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise BrowseError(f"only http and https URLs can be opened, not {url}")
        host = parts.hostname
        if not host:
            raise BrowseError(f"the URL has no host: {url}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise BrowseError(f"the URL has an invalid port: {url}") from None
        addresses = self.resolve(host, port)
        if not self.allow_private_network:
            for a in addresses:
                if not _is_public(ipaddress.ip_address(a.split("%", 1)[0])):
                    raise BrowseError(
                        f"{host} resolves to {a}, a private, loopback or link-local address; "
                        "such addresses are refused (setting allow_private_network=True allows them)"
                    )
        return host, addresses

    def resolve(self, host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        future = _RESOLVER.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=self.dns_timeout)
        except concurrent.futures.TimeoutError:
            raise BrowseError(f"DNS lookup of {host} timed out after {self.dns_timeout:g} s") from None
        except (socket.gaierror, UnicodeError) as e:
            raise BrowseError(f"DNS lookup of {host} failed: {e}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise BrowseError(f"DNS lookup of {host} returned no address")
        return addresses
