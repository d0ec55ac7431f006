"""What the organiser types to add a local name, as the name and the value the nameserver
takes (`PUT /nameserver/records/NAME {"value": ...}`; no Textual here).

Every form an organiser knows is taken: `printer.retreat.lan=10.0.0.9` (dnsmasq's
`address=`, and `--record`), `printer.retreat.lan 10.0.0.9`, a hosts-file line
`10.0.0.9 printer.retreat.lan`, dnsmasq's own `address=/printer.retreat.lan/10.0.0.9`,
and `NAME=cname:TARGET` for an alias. A mistake is one line saying which part is wrong,
before anything is sent; the nameserver checks again, and has the last word.
"""

from __future__ import annotations

import ipaddress
import re

EXAMPLE = "printer.retreat.lan=10.0.0.9"
MAX_TYPED = 600  # characters shown back of what was typed: a name is at most 253
# a DNS name as the nameserver takes one (its blocklist's _DOMAIN): labels of letters,
# digits and `_`, hyphens inside; `*.` first names every name under it
_LABEL = r"[a-z0-9_]+(?:-+[a-z0-9_]+)*"
_NAME = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}\.?", re.IGNORECASE | re.ASCII)
_DNSMASQ = "address=/"


class BadEntry(ValueError):
    """What the organiser typed is not a local name: one line, saying which part."""


def parse(typed: str) -> tuple[str, str]:
    """(name, value) from what the organiser typed; the value an IP address or
    `cname:TARGET`. BadEntry, one line, for anything else."""
    text = typed.strip()
    if text[: len(_DNSMASQ)].lower() == _DNSMASQ:
        parts = text[len(_DNSMASQ) :].split("/")
        if len(parts) != 2:
            raise BadEntry(f"expected address=/NAME/ADDRESS, got: {_shown(text)}")
        name, value = parts
    elif "=" in text:
        name, _, value = text.partition("=")
    else:
        parts = text.split()
        if len(parts) != 2:
            raise BadEntry(f"expected NAME=ADDRESS (e.g. {EXAMPLE}), got: {_shown(text)}")
        name, value = parts
        if _address(name) is not None and _address(value) is None:  # a hosts-file line
            name, value = value, name
    name, value = name.strip(), value.strip()
    if not name or not value:
        raise BadEntry(f"expected NAME=ADDRESS (e.g. {EXAMPLE}), got: {_shown(text)}")
    _check_name(name)
    return name, _value(name, value)


def _check_name(name: str) -> None:
    if _address(name) is not None:
        raise BadEntry(f"{_shown(name)} is an address: the name comes first, e.g. {EXAMPLE}")
    if len(name.rstrip(".")) > 253 or not _NAME.fullmatch(name):
        raise BadEntry(
            f"not a name: {_shown(name)} (letters, digits and hyphens between dots,"
            " e.g. printer.retreat.lan)"
        )
    if any(len(label) > 63 for label in name.rstrip(".").split(".")):
        raise BadEntry(f"not a name: {_shown(name)} (a part between dots has 63 at most)")


def _value(name: str, value: str) -> str:
    """The value as the nameserver takes it: an IP address, or `cname:TARGET`."""
    if value[:6].lower() == "cname:":
        target = value[6:].strip()
        if not _NAME.fullmatch(target) or target.startswith("*"):
            raise BadEntry(f"not a name to alias {name} to: {_shown(target) or 'nothing'}")
        return f"cname:{target}"
    found = _address(value)
    if found is None:
        if _with_port(value):
            raise BadEntry(f"a name points at an address, not a port: {_shown(value)}")
        alias = f" (an alias: {name}=cname:{value})" if _looks_named(value) else ""
        raise BadEntry(f"not an IP address: {_shown(value)}{alias}")
    if isinstance(found, ipaddress.IPv6Address) and found.scope_id is not None:
        # `%eth0` names an interface of one machine: no other machine can reach it
        raise BadEntry(f"an address without %{found.scope_id}, please: {_shown(value)}")
    return str(found)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, IPv6 in brackets too (`[fd00::9]`, as in a URL), or None."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return None


def _looks_named(text: str) -> bool:
    """A name, not an address mistyped (`10.0.0.999`): its last part is no number."""
    return len(text) <= 253 and bool(_NAME.fullmatch(text)) and not text.rsplit(".")[-1].isdigit()


def _with_port(text: str) -> bool:
    """`10.0.0.9:8080` or `[fd00::9]:8080`: an address and a port."""
    host, colon, port = text.rpartition(":")
    return bool(colon) and port.isdigit() and _address(host) is not None


def _shown(text: str) -> str:
    return text if len(text) <= MAX_TYPED else text[:MAX_TYPED] + "…"
