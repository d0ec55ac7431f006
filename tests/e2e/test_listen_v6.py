"""An IPv6 listen address is printed as it is written: in brackets, before its port."""

from __future__ import annotations

import re
from pathlib import Path

from retreatkit.mirror.testing import start_mirror
from retreatkit.nameserver.testing import start_nameserver
from retreatkit.testing import Process, bob_argv


def test_the_nameserver_prints_an_ipv6_listen_address_in_brackets() -> None:
    ns = start_nameserver("--upstream", "127.0.0.1:9", listen="[::1]:0")
    try:
        line = next(s for s in ns.process.seen if s.startswith("Nameserver listening on "))
        assert line == f"Nameserver listening on [::1]:{ns.port} (UDP and TCP)"
    finally:
        ns.stop()


def test_the_relay_prints_an_ipv6_listen_address_in_brackets() -> None:
    proc = Process.start(bob_argv("relay", "--listen", "[::1]:0", "--admin", "127.0.0.1:0"))
    try:
        line = proc.wait_for(r"^Relay listening on .*$")[0]
        assert re.fullmatch(r"Relay listening on \[::1\]:[1-9]\d*", line), line
    finally:
        proc.stop()


def test_the_mirror_prints_an_ipv6_listen_address_in_brackets(tmp_path: Path) -> None:
    server, _ = start_mirror(tmp_path / "store", listen="[::1]:0")
    try:
        line = next(s for s in server.process.seen if s.startswith("Mirror listening on "))
        assert re.fullmatch(
            rf"Mirror listening on http://\[::1\]:[1-9]\d*/ \(store {tmp_path}/store\)", line
        ), line
    finally:
        server.stop()


def test_an_ipv6_admin_address_is_printed_in_brackets() -> None:
    proc = Process.start(bob_argv("relay", "--listen", "127.0.0.1:0", "--admin", "[::1]:0"))
    try:
        line = proc.wait_for(r"^Admin on .*$")[0]
        assert re.fullmatch(r"Admin on http://\[::1\]:[1-9]\d*/status", line), line
    finally:
        proc.stop()
