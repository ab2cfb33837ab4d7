"""Trusted proxies: the real client address of a request relayed by a load balancer.

Sans-I/O: no sockets. The server asks :meth:`TrustedProxies.client` for the address to
put in place of the socket peer (``Engine.set_peer``) before admission counts it per IP,
so ``max_connections_per_ip`` and ``Context.peer`` see the client, not the proxy.

Only ``X-Forwarded-For`` is read (what nginx's ``$proxy_add_x_forwarded_for`` and
HAProxy's ``option forwardfor`` write). The RFC 7239 ``Forwarded`` header and the PROXY
protocol are not: the PROXY protocol puts bytes before the HTTP head, which only the
compiled core could consume.

The rule (the one nginx's ``real_ip_recursive on`` and go-ethereum-style deployments use):

* the socket peer must be a trusted proxy, else every ``X-Forwarded-For`` is ignored
  (anyone can send the header);
* all ``X-Forwarded-For`` lines are one list, in order (RFC 9110 §5.3); empty elements
  are skipped (§5.6.1);
* walk the list from the right (the hop nearest to us) and take the first address that
  is not itself a trusted proxy. Everything left of it was written by the client and is
  not believed;
* an element that is not an IP address (``unknown``, an obfuscated ``_node``, a host
  name, an IPv6 zone) stops the walk: the answer is the last trusted hop before it, or
  no change when it is the rightmost element; when every element is trusted, the
  leftmost one.

Accepted element forms: ``192.0.2.1``, ``192.0.2.1:5678``, ``2001:db8::1``,
``[2001:db8::1]``, ``[2001:db8::1]:443``. IPv4-mapped IPv6 addresses
(``::ffff:192.0.2.1``) count as their IPv4 address, for the trust check and the per-IP
count alike. The port, when present, is not used: the client's port is unknown behind a
proxy, so ``Context.peer`` reads ``(ip, 0)``.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Sequence, Union

__all__ = ["TrustedProxies", "parse_address"]

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: The header the server reads, lowercase.
X_FORWARDED_FOR = "x-forwarded-for"

_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only (str.isdigit also takes "²")


def _unmap(a: Address) -> Address:
    if a.version == 6:
        mapped = a.ipv4_mapped  # type: ignore[union-attr]
        if mapped is not None:
            return mapped
    return a


def parse_address(text: str) -> Address | None:
    """One ``X-Forwarded-For`` element as an address (see the module doc for the forms);
    ``None`` when it is not one."""
    t = text.strip(" \t")
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            return None
        rest = t[end + 1:]
        if rest and not (rest[0] == ":" and _PORT.fullmatch(rest, 1)):
            return None
        t = t[1:end]
        if ":" not in t:  # brackets hold IPv6 only
            return None
    elif t.count(":") == 1:  # IPv4 with a port; bare IPv6 has two colons or more
        t, _, port = t.partition(":")
        if not _PORT.fullmatch(port):
            return None
    if not t or "%" in t:  # an IPv6 zone names an interface of the sender, not a client
        return None
    try:
        return _unmap(ipaddress.ip_address(t))
    except ValueError:
        return None


class TrustedProxies:
    """The networks whose ``X-Forwarded-For`` is believed.

    ``networks``: addresses or networks as text (``"127.0.0.1"``, ``"10.0.0.0/8"``,
    ``"::1"``, ``"fd00::/8"``) or ``ipaddress`` network objects. A network with host bits
    set (``"10.0.0.1/8"``) is refused with a ValueError: it is usually a typo.
    """

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str | Network]) -> None:
        if isinstance(networks, str):
            raise TypeError("trusted_proxies must be a list of networks, not a str")
        nets: list[Network] = []
        for n in networks:
            if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                nets.append(n)
            elif isinstance(n, str):
                try:
                    nets.append(ipaddress.ip_network(n.strip()))
                except ValueError as e:
                    raise ValueError(f"trusted_proxies: {n!r} is not an IP network ({e})") from None
            else:
                raise TypeError(f"trusted_proxies: {n!r} is not a str or an ipaddress network")
        self.networks: tuple[Network, ...] = tuple(nets)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"

    def _trusted(self, a: Address) -> bool:
        for net in self.networks:
            if a in net:  # False across IP versions, never raises
                return True
        return False

    def trusts(self, ip: str) -> bool:
        """Whether a socket peer address (as the core reports it) is a trusted proxy."""
        a = parse_address(ip)
        return a is not None and self._trusted(a)

    def client(self, peer: str, values: Sequence[str]) -> str | None:
        """The real client of a request from ``peer`` carrying these ``X-Forwarded-For``
        values (one per header line, in order); ``None``: keep ``peer`` (not a trusted
        proxy, no header, or nothing usable in it)."""
        if not values or not self.trusts(peer):
            return None
        found: Address | None = None
        for value in reversed(values):
            for element in reversed(value.split(",")):
                if not element.strip(" \t"):
                    continue
                a = parse_address(element)
                if a is None:
                    return None if found is None else str(found)
                found = a
                if not self._trusted(a):
                    return str(a)
        return None if found is None else str(found)

    def client_from_headers(self, peer: str, headers: Iterable[tuple[str, str]]) -> str | None:
        """:meth:`client` with the request headers as ``handle_request`` reports them."""
        return self.client(peer, [v for n, v in headers if n.lower() == X_FORWARDED_FOR])
