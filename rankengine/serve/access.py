"""Who may call what: the admin endpoint's token, and which hosts count as this machine only."""

from __future__ import annotations

import ipaddress

ADMIN_TOKEN_ENV = "RANKENGINE_ADMIN_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only: a loopback
    address (127.0.0.0/8, ::1) or ``localhost``. Anything else, a name included, may be
    reachable from elsewhere."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
