"""Announce an admin endpoint bound beyond loopback as `_retreat-admin._tcp.local.`.

Only the address and port are published, with the services hosted: the endpoint still
refuses everything without the token, so finding it gives nothing away.
"""

from __future__ import annotations

from retreatkit.mdns import LanAdvert

# not `_retreatkit-admin`: RFC 6335 (5.1) caps a service name at 15 characters, and
# zeroconf refuses a longer one; this matches `_retreat-relay` and `_retreat-mirror`
SERVICE_TYPE = "_retreat-admin._tcp.local."


def announcement(services: list[str]) -> LanAdvert:
    """The endpoint's announcement, started once it listens (never on loopback)."""
    properties = {"services": ",".join(services), "path": "/status"}
    return LanAdvert(SERVICE_TYPE, "retreatkit", properties)
