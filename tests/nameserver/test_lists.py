"""Blocklist sources read in process: what is not a list fails like a missing one, and the
last good copy stays in force, with what the log and /status say about it."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from retreatkit.mirror import fakeupstream
from retreatkit.nameserver.blocklist import MAX_LINE, MAX_NAMES, bounded
from retreatkit.nameserver.fakes import FakeTransport, ManualClock, UDPClient, Zone
from retreatkit.nameserver.lists import file_problem
from retreatkit.nameserver.service import Nameserver, Settings

ZONE = Zone("$TTL 300\n@ SOA ns.test. h.test. 1 3600 600 86400 60\nads.example A 198.51.100.66\n")
UP = ("192.0.2.53", 53)
PORTAL = """<!DOCTYPE html>
<html><head><title>Welcome to the Hotel Wi-Fi</title></head>
<body><form action="/login">Room <input name="room"> Name <input name="name">
<button>Connect</button></form></body>
</html>
"""


def nameserver(*sources: str) -> Nameserver:
    settings = Settings(listen=("127.0.0.1", 0), upstreams=[UP], blocklists=list(sources))
    return Nameserver(settings, clock=ManualClock(), transport=FakeTransport({UP: ZONE.answer}))


async def addresses(ns: Nameserver, name: str) -> list[str]:
    answer = await UDPClient(ns.resolver).ask(name)
    return sorted(r.to_text() for rrset in answer.answer for r in rrset)


async def test_a_login_page_in_place_of_the_list_keeps_the_last_good_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lists = tmp_path / "block.txt"
    lists.write_text("||ads.example.test^\n0.0.0.0 a.test\n0.0.0.0 b.test\nc.test\n")
    ns = nameserver(str(lists))
    await ns.reload()
    lists.write_text(PORTAL)
    with caplog.at_level(logging.WARNING, "retreatkit.nameserver"):
        await ns.reload()
    why = "not a blocklist: it is a web page (a Wi-Fi login page in its place?)"
    assert caplog.messages == [f"blocklist {lists} failed ({why}); keeping the last good copy"]
    doc = ns.status()
    (source,) = doc["blocklists"]
    assert (source["entries"], source["bad_lines"], source["last_error"]) == (4, 0, why)
    assert doc["blocklist_entries"] == 4
    assert doc["warnings"] == [f"blocklist {lists} failed: {why}; keeping the last good copy"]
    assert await addresses(ns, "ads.example.test") == ["0.0.0.0"]


async def test_random_bytes_count_as_a_failed_load(tmp_path: Path) -> None:
    lists = tmp_path / "block.txt"
    lists.write_text("||ads.example.test^\n")
    ns = nameserver(str(lists))
    await ns.reload()
    lists.write_bytes(bytes(range(256)) * 4096)  # 1 MiB of every byte, nothing like a list
    await ns.reload()
    (source,) = ns.status()["blocklists"]
    assert source["entries"] == 1
    assert source["last_error"].startswith("not a blocklist: ")
    assert await addresses(ns, "ads.example.test") == ["0.0.0.0"]


async def test_a_server_that_sends_a_web_page_has_sent_no_list(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("||ads.example.test^\n")
    (tmp_path / "list.html").write_text("||ads.example.test^\n")  # served as text/html
    async with fakeupstream.serving(tmp_path) as upstream:
        good, page = f"{upstream.url}list.txt", f"{upstream.url}list.html"
        ns = nameserver(good, page)
        await ns.reload()
    (first, second) = ns.status()["blocklists"]
    assert (first["entries"], first["last_error"]) == (1, None)
    assert (second["entries"], second["last_error"]) == (
        0,
        "not a blocklist: the server sent a web page (text/html)",
    )
    assert ns.status()["warnings"] == [
        f"blocklist {page} failed: not a blocklist: the server sent a web page (text/html);"
        " no list from it is in use"
    ]


async def test_a_list_gone_at_reload_says_what_stays_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept, never = tmp_path / "kept.txt", tmp_path / "never.txt"
    kept.write_text("||ads.example.test^\n")
    never.write_text("||other.example.test^\n")
    ns = nameserver(str(kept), str(never))
    await ns.reload()
    kept.unlink()
    never.unlink()
    ns.sources.sources[str(never)].good = None  # as if it had never loaded
    with caplog.at_level(logging.WARNING, "retreatkit.nameserver"):
        await ns.reload()
    assert caplog.messages == [
        f"blocklist {kept} failed (No such file or directory); keeping the last good copy",
        f"blocklist {never} failed (No such file or directory); no list from it is in use",
    ]
    tmp_path.joinpath("folder").mkdir()
    ns = nameserver(str(tmp_path / "folder"))
    await ns.reload()
    assert ns.status()["blocklists"][0]["last_error"] == "a folder, not a file"


async def test_a_list_file_is_opened_once_per_load_and_judged_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One open, and the checks (a folder, a pipe, the size) on what it opened: a stat by
    name and a second open were both work and a window for the file to change."""
    lists = tmp_path / "block.txt"
    lists.write_text("ads.example.test\n")
    seen: list[str] = []

    def counting(name: str, real: Any) -> Any:
        def counted(path: object, *args: Any, **kw: Any) -> Any:
            if str(path) == str(lists):
                seen.append(name)
            return real(path, *args, **kw)

        return counted

    for module, name in ((os, "open"), (os, "stat"), (io, "open")):
        monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    ns = nameserver(str(lists))
    await ns.reload()
    await ns.reload()
    assert seen == ["open", "open"]  # os.open, once for each load
    assert ns.status()["blocklist_entries"] == 1
    monkeypatch.undo()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened all the same (without blocking), then refused
    for source, why in ((fifo, "not a regular file"), (tmp_path, "a folder, not a file"),
                        (tmp_path / "gone.txt", "No such file or directory")):  # fmt: skip
        assert file_problem(str(source)) == why


async def test_a_line_too_long_or_naming_too_many_names_is_one_bad_line(tmp_path: Path) -> None:
    """A hosts line of 200,000 names (2.6 MB) is read in pieces of MAX_LINE and counted as
    one bad line, never held, split and joined whole; so is a short line naming more than
    MAX_NAMES names. The lines around them are taken."""
    lists = tmp_path / "block.txt"
    many = " ".join(f"h{i:07x}.ex.test" for i in range(200_000))
    crowded = " ".join(f"c{i}.test" for i in range(MAX_NAMES + 1))
    assert len(crowded) < MAX_LINE
    lists.write_text(
        f"0.0.0.0 ads.example.test\n0.0.0.0 {many}\n0.0.0.0 {crowded}\n||tracker.test^\n"
    )
    ns = nameserver(str(lists))
    await ns.reload()
    (source,) = ns.status()["blocklists"]
    assert (source["entries"], source["bad_lines"]) == (2, 2)
    assert await addresses(ns, "ads.example.test") == ["0.0.0.0"]
    assert await addresses(ns, "h0000001.ex.test") == []
    pieces = list(bounded(io.StringIO(f"a.test\n{many}\nb.test")))
    assert pieces == ["a.test\n", f"{many}\n"[: MAX_LINE + 1], "b.test"]
