"""Which health URLs the operator may fetch: ``spec.failover.healthUrl`` is written by namespace
users, and the operator fetches it from inside the cluster, so it is a request forgery vector.

The rules, from the most to the least absolute:

1. Never: link-local addresses (169.254.0.0/16, fe80::/10, where cloud metadata services live),
   unspecified and multicast addresses. The CRD refuses the well-known spellings already; this
   check also covers names that resolve there and numeric spellings a pattern cannot see.
2. Always allowed: the region's own Service (``memoria-<name>``, ``.<namespace>``,
   ``.<namespace>.svc``, ``.<namespace>.svc.<cluster domain>``).
3. Anything else only when the operator is told so: ``MEMORIA_OPERATOR_HEALTH_URL_ALLOW``
   (chart value ``operator.healthUrlAllow``), a comma-separated list of host names, ``*.suffix``
   patterns and CIDRs. Loopback is refused unless a listed CIDR holds it (the local test bed
   runs regions as processes on 127.0.0.1; in a cluster the operator's loopback is its own pod).

Names are resolved before the check, and every address they resolve to must pass.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProbePolicy:
    hosts: frozenset[str] = frozenset()  # exact names, lower case
    suffixes: tuple[str, ...] = ()  # from "*.example.com": ".example.com"
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> ProbePolicy:
        """From the comma-separated setting; raises ValueError naming a bad entry."""
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            if item.startswith("*."):
                suffixes.append(item[1:].lower())
            elif "/" in item or _is_address(item):
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ValueError(
                        f"{item!r} is neither a host name, a *.suffix nor a CIDR"
                    ) from None
            else:
                hosts.add(item.lower())
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def _listed_name(self, host: str) -> bool:
        return host in self.hosts or any(host.endswith(s) for s in self.suffixes)

    def _listed_address(self, address: Address) -> bool:
        return any(address in net for net in self.networks)

    def refusal(self, url: str, *, own_service: str, namespace: str) -> str | None:
        """None when ``url`` may be fetched, else why not (for the region's status). Resolves
        the host: call from a worker thread."""
        try:
            host = (urlsplit(url).hostname or "").lower().rstrip(".")
        except ValueError:
            return "the health URL cannot be parsed"
        if not host:
            return "the health URL has no host"
        own = host == own_service or host.startswith(f"{own_service}.{namespace}")
        if not own and not self._listed_name(host) and not _is_address(host):
            return (
                f"host {host} is not the region's own Service and not allowed by the operator "
                "(chart value operator.healthUrlAllow)"
            )
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return f"host {host} does not resolve"
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
            why = _never(address)
            if why:
                return f"host {host} resolves to {why} addresses, which are never probed"
            if address.is_loopback and not self._listed_address(address):
                return f"host {host} is a loopback address; allow it with operator.healthUrlAllow"
            if _is_address(host) and not own and not self._listed_address(address):
                return (
                    f"address {host} is not allowed by the operator "
                    "(chart value operator.healthUrlAllow)"
                )
        return None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _never(address: Address) -> str | None:
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    return None
