"""The dashboard's pure parts: escaping, figures, trends and the leak alarm, the log ring,
actions' answers in words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retreatkit import units
from retreatkit.cli import ui as bob_ui
from retreatkit.cli import vm as vm_cli
from retreatkit.mirror.space import Space
from retreatkit.tui import answers, columns, views
from retreatkit.tui.escape import visible
from retreatkit.tui.fmt import (
    MAX_ROWS,
    NOT_REPORTED,
    count,
    duration,
    number,
    percent,
    plural,
    rate,
    size,
    spark,
)
from retreatkit.tui.guests import parse
from retreatkit.tui.logbuffer import SEQ, TEXT, LogBuffer, LogFilter, to_line
from retreatkit.tui.state import MAX_SERVICES, DashboardState
from retreatkit.tui.testing import NOW, guest
from retreatkit.tui.trend import Series

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("[@click=app.quit]x[/]", "[@click=app.quit]x[/]"),  # markup is text, kept as is
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("exe\u202etxt", "exe\\u202etxt"),  # bidi override
        ("tab\there\r\n", "tab\\x09here\\x0d\\x0a"),
        ("café ✓", "café ✓"),
    ],
)
def test_visible(raw: str, shown: str) -> None:
    assert visible(raw) == shown


def test_visible_is_bounded() -> None:
    assert visible("x" * 10_000, 10) == "x" * 9 + "…"


@pytest.mark.parametrize(
    ("ch", "shown"), [("\x1b", "\\x1b"), ("\u202e", "\\u202e"), ("\U000e0001", "\\U000e0001")]
)
def test_visible_is_bounded_after_escaping(ch: str, shown: str) -> None:
    """A control character shows as 4 to 10 characters: what is shown is cut to the
    limit, never inside an escape, not the raw text before it grew tenfold."""
    assert visible(ch * 400) == shown * (399 // len(shown)) + "…"
    assert len(visible(ch * 100_000)) <= 400
    assert visible("ab" + ch, 2 + len(shown)) == "ab" + shown  # it fits whole
    assert visible("ab" + ch + "c", 2 + len(shown)) == "ab…"  # it would not


@given(st.text(), st.integers(min_value=1, max_value=60))
def test_visible_is_printable_and_within_its_limit(text: str, limit: int) -> None:
    shown = visible(text, limit)
    assert shown.isprintable() and len(shown) <= limit
    assert shown == visible(text, 10 * len(text) + 1) or shown.endswith("…")


def test_figures() -> None:
    assert [size(0), size(1536), size(None), size("12"), size(True)] == [
        "0 B",
        "1.5 kB",
        NOT_REPORTED,
        NOT_REPORTED,
        NOT_REPORTED,
    ]
    assert [duration(59), duration(3725), duration(-1)] == ["59s", "1h 02m", NOT_REPORTED]
    assert number(float("inf")) is None
    assert spark([0, 1, 2, 4]) == "▁▂▄█"
    assert spark([100, 101, 102], from_zero=False) == "▁▄█"


@pytest.mark.parametrize(
    "odd",
    [10**400, -(10**400), 2**63 + 1, 1e308, NAN, INF, -INF],
    ids=["10**400", "-10**400", "2**63+1", "1e308", "nan", "inf", "-inf"],
)
def test_a_figure_out_of_any_range_is_not_reported_and_never_raises(odd: float) -> None:
    assert number(odd) is None
    shown = [count(odd), size(odd), rate(odd), duration(odd), percent(odd)]
    assert shown == [NOT_REPORTED] * 5
    assert plural(odd, "guest", "guests") == "— guests"


def test_negative_figures_are_shown_as_said_and_trends_take_any_float() -> None:
    assert number(-(2**63)) == -(2.0**63)
    assert [count(-3), size(-1536), percent(-0.5), duration(-5)] == [
        "-3",
        "-1.5 kB",
        "-50.0%",
        NOT_REPORTED,
    ]
    assert spark([-1.7e308, 0.0, 1.7e308], from_zero=False) == "▁▄█"
    assert spark([NAN, INF, 1.0, 2.0]) == "▁▁▄█"


def test_leak_needs_a_whole_window_of_growth() -> None:
    s = Series()
    for t in range(0, 601, 60):
        s.add(t, 10 + t / 60)  # one more connection a minute, never a dip
    leak = s.leak("relay open connections", window=600, now=600)
    assert leak is not None and leak.slope_per_minute == pytest.approx(1.0)
    assert leak.line() == "relay open connections only grew for 10 min: 10 -> 20 (+1.00/min)"
    assert s.leak("x", window=900, now=600) is None  # not watched long enough to say
    s.add(660, 19)  # one dip and it is not a leak
    assert s.leak("x", window=600, now=660) is None


def test_state_alarms_and_fields_not_reported() -> None:
    state = DashboardState(["a:1", "b:2"], leak_window=120)
    state.record(
        "a:1", 0, status={"relay": {"up": False}, "mirror": {"warnings": ["disk full", 3]}}
    )
    state.record("b:2", 0, error="b:2: cannot connect (connection refused)")
    for t in range(0, 181, 30):
        state.record("a:1", t, status={"process": {"open_files": 10 + t}, "relay": {"up": True}})
    assert state.alarms(180) == [
        "leak? process open files only grew for 2 min: 70 -> 190 (+60.00/min) on a:1",
        "b:2: cannot connect (connection refused)",
    ]


def test_a_process_whose_log_is_not_written_is_an_alarm_until_it_is() -> None:
    state = DashboardState(["a:1"])
    line = "the log /x/retreatkit.log cannot be written: No space left on device"
    state.record("a:1", 0, status={"process": {"warnings": [line]}, "relay": {"up": True}})
    assert state.alarms(0) == [line]
    state.record("a:1", 1, status={"process": {"warnings": []}, "relay": {"up": True}})
    assert state.alarms(1) == []


def test_log_buffer_is_bounded_and_filters_as_lines_arrive() -> None:
    buffer = LogBuffer(capacity=100)
    records = [
        {
            "seq": i,
            "service": "relay" if i % 2 else "mirror",
            "level": "INFO",
            "message": f"line {i}\x1b[31m",
        }
        for i in range(1, 301)
    ]
    buffer.set_filter(LogFilter(service="relay", text="LINE 29"))
    buffer.extend(records)
    assert len(buffer.lines) == 100 and buffer.received == 300
    # the filtered view keeps its own last matches, older than the ring when they are rare
    assert [x[SEQ] for x in buffer.shown] == [29, 291, 293, 295, 297, 299]
    assert buffer.shown[0][TEXT].endswith("line 29\\x1b[31m")
    buffer.set_filter(LogFilter(level="ERROR"))
    assert not buffer.shown


def test_a_log_field_of_any_shape_is_one_line_of_text() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(100_000):  # deeper than JSON can be written from here
        inner.append([])
        inner = inner[0]
    line = to_line({"seq": True, "level": "WARN", "service": ["a\nb"], "message": deep}, "", NOW)
    assert line[SEQ] == 0
    assert line[TEXT] == '— ["a\\nb"]   WARN    ?'


def test_log_events_are_parsed_in_one_go_and_junk_is_skipped() -> None:
    from retreatkit.tui.sources import _events

    good = [b'data: {"seq": 1, "message": "a"}', b'data: {"seq": 2, "message": "b"}']
    assert [r["seq"] for r in _events(good)] == [1, 2]
    junk = [good[0], b"data: {not json", b": keepalive", b"data: [1]", good[1]]
    assert [r["seq"] for r in _events(junk)] == [1, 2]
    deep = [good[0], b"data: " + b"[" * 100_000, good[1]]  # past the parser's depth
    assert [r["seq"] for r in _events(deep)] == [1, 2]
    # a record split over two data: lines (SSE allows it) is one record
    assert _events([b'data: {"seq": 3,\ndata:  "message": "c"}']) == [{"seq": 3, "message": "c"}]


@pytest.mark.parametrize(
    ("line", "answer", "shown"),
    [
        (answers.reloaded, {"blocklists": []}, "blocklists reloaded: none configured"),
        (answers.reloaded, {"blocklists": [{"source": "https://lists.example/ads/", "entries": 1,
                                            "bad_lines": 0}]},
         "blocklists reloaded: 1 entry from ads"),
        (answers.reloaded, {"blocklists": [{"source": "/srv/a.txt", "entries": 9,
                                            "last_error": "HTTP 503\nmore"}]},
         "blocklists reloaded: a.txt failed (HTTP 503), its last 9 entries kept"),
        (answers.reloaded, ["not", "the", "contract"], "blocklists reloaded"),
        (answers.reloaded, "<html>", "blocklists reloaded"),
        (lambda a: answers.blocking(a, NOW), {"blocking": None}, "blocking changed"),
        (lambda a: answers.added("x.lan", a), {"name": "x.lan"}, "added x.lan"),
        (lambda a: answers.flushed("x.org", a), {"dropped": "2"}, "flushed x.org"),
        (lambda a: answers.flushed("x.org", a), {"dropped": 2},
         "flushed x.org: 2 cache entries dropped"),
    ],
)  # fmt: skip
def test_an_answer_is_plain_words_whatever_its_shape(
    line: Callable[[object], str], answer: object, shown: str
) -> None:
    assert line(answer) == shown


def test_columns_fit_by_cutting_the_widest_first() -> None:
    header = ["Time", "Client", "Name", "Type", "Answer", "ms"]
    rows = [["10:59:58", "10.0.0.7", "x" * 60, "AAAA", "forwarded", "1500.6"]]
    natural = columns.natural_widths(header, rows)
    least = columns.least_widths(header, natural)
    assert natural == [8, 8, 60, 4, 9, 6] and least == [8, 8, 8, 4, 8, 6]
    assert columns.fit(natural, least, 200) == natural  # room for all: nothing cut
    assert columns.fit(natural, least, 64) == [8, 8, 29, 4, 9, 6]  # only the name gives way
    assert columns.fit(natural, least, 20) == least  # even the least overflows: no lower
    # a client's IPv6 address and the answer shown whole: only the name gives way
    natural = columns.natural_widths(
        header, [["10:59:58", "2001:db8:4f2a:7c00:a1b2:c3d4:e5f6:789a", "x" * 60, "A",
                  "forwarded NXDOMAIN", "0.2"]],
    )  # fmt: skip
    least = columns.least_widths(header, natural, whole={1, 4})
    assert natural == [8, 38, 60, 4, 18, 3] and least == [8, 38, 8, 4, 18, 3]
    assert columns.fit(natural, least, 90) == [8, 38, 19, 4, 18, 3]
    trend = [10, 24]  # a trend is given up first, down to its heading
    least = columns.least_widths(["Service", "Trend"], trend, {1})
    assert columns.fit(trend, least, 20, {1}) == [10, 10]
    assert columns.cut_start("/srv/lists/blocks.txt", 12) == "…/blocks.txt"
    assert columns.cut_start("ads.txt", 12) == "ads.txt"
    # a URL keeps its host: the scheme goes first, then the start of the path
    url = "http://deb.example.org/debian-security"
    assert columns.cut_start(url, 40) == url
    assert columns.cut_start(url, 35) == "deb.example.org/debian-security"
    assert columns.cut_start(url, 28) == "deb.example.org/…an-security"
    assert columns.cut_start(url, 21) == "deb.example.org/…rity"
    assert columns.cut_start(url, 20) == "…org/debian-security"  # no room for 4 of the path
    assert columns.cut_start("http://host.example", 12) == "host.example"


def test_memory_that_creeps_by_a_few_pages_is_no_leak_and_a_real_one_is_in_mb() -> None:
    state = DashboardState(["a:1"], leak_window=600)
    for t in range(0, 661, 60):  # 8 KiB over 11 minutes, never a dip: seen on an idle `up`
        state.record("a:1", t, status={"process": {"memory_bytes": 69_505_024 + t * 12}})
    assert state.alarms(660) == []
    state = DashboardState(["a:1"], leak_window=600)
    for t in range(0, 601, 60):  # 1 MiB a minute
        state.record("a:1", t, status={"process": {"memory_bytes": (64 + t // 60) << 20}})
    assert state.alarms(600) == [
        "leak? process memory only grew for 10 min: 67.1 MB -> 77.6 MB (+1.0 MB/min) on a:1"
    ]


def test_an_upstream_due_for_a_try_and_one_never_answered_say_so() -> None:
    state = DashboardState(["a:1"])
    mirror_up = {"url": "http://up.test/", "state": "down", "retry_in_seconds": 0.0}
    dns_up = {"address": "192.0.2.53:53", "state": "down", "latency_ms": None}
    status = {"mirror": {"upstreams": {"pypi": mirror_up}}, "nameserver": {"upstreams": [dns_up]}}
    state.record("a:1", 0, status=status)
    e = state.endpoints["a:1"]
    # the mirror tries a down upstream again with the first request after its backoff
    assert views.upstream_rows(e, NOW)[0][4] == "next request"
    assert views.dns_upstream_rows(e) == [("192.0.2.53:53", "down", NOT_REPORTED)]


def test_a_blocklist_table_without_rows_says_why() -> None:
    """A configured list is a row from the start, read `never` until it loads; no row is
    none configured; no `blocklists` at all is not reported."""
    state = DashboardState(["a:1"])
    e = state.endpoints["a:1"]
    unread = {"source": "/srv/ads.txt", "entries": 0, "bad_lines": 0, "loaded_at": None}
    state.record("a:1", 0, status={"nameserver": {"blocklists": [unread]}})
    assert views.blocklist_rows(e, NOW) == [("/srv/ads.txt", "0", "0", "never", "")]
    state.record("a:1", 1, status={"nameserver": {"blocklists": []}})
    assert (views.blocklist_rows(e, NOW), views.no_blocklists(e)) == ([], "none configured")
    state.record("a:1", 2, status={"nameserver": {}})
    assert views.no_blocklists(e) == "not reported"


@pytest.mark.parametrize(
    ("answer", "rcode", "shown"),
    [
        ("forwarded", "NXDOMAIN", "forwarded NXDOMAIN"),
        ("cached", "NXDOMAIN", "cached NXDOMAIN"),
        ("forwarded", "NOERROR", "forwarded"),
        ("servfail", "SERVFAIL", "servfail"),
        ("stale", "SERVFAIL", "stale SERVFAIL"),
        ("blocked", None, "blocked"),  # an older nameserver's line: no rcode
    ],
)
def test_a_querys_answer_says_its_response_code_unless_plain(
    answer: str, rcode: str | None, shown: str
) -> None:
    row = views.query_row({"answer": answer, "rcode": rcode, "name": "x.example"}, NOW)
    assert row[4] == shown


def test_an_endpoint_that_stopped_answering_shows_no_old_pid() -> None:
    state = DashboardState(["a:1"])
    process = {"pid": 4242, "uptime_seconds": 60, "memory_bytes": 50_000_000, "version": "1"}
    state.record("a:1", 0, status={"process": process, "relay": {"up": True}})
    assert views.process_rows(state)[0][:2] == ("a:1", "4242")
    state.record("a:1", 5, error="a:1: cannot connect (connection refused)")
    assert views.process_rows(state)[0] == ("a:1", *(NOT_REPORTED,) * 3, "", *(NOT_REPORTED,) * 3)
    state.record("a:1", 9, status={"process": {**process, "pid": 5151}, "relay": {"up": True}})
    assert views.process_rows(state)[0][:2] == ("a:1", "5151")


def test_a_size_reads_alike_on_the_dashboard_in_status_and_on_the_command_line() -> None:
    """One unit everywhere (powers of 1000, as df -H): the dashboard's figure beside a
    /status warning, bob's lines or `vm list` is the same figure, never MiB against MB."""
    free, keep = 20_300_000, 537_000_000
    warning = Space(keep).fullness(free)  # the mirror's own words, in /status's warnings
    assert warning == (
        "nearly full: 20.3 MB free, below the 537 MB it keeps free (keep_free_bytes)"
    )
    assert [size(free), size(keep)] == ["20.3 MB", "537 MB"]  # the dashboard
    assert bob_ui.size(free) == "20.3 MB"  # bob send and recv
    guest = {"name": "r1", "service": "relay", "state": "running", "uptime_seconds": 5,
             "restarts": 0, "memory_bytes": 146_800_640, "cpu_seconds": 1.0, "admin": "",
             "last_exit": "", "pid": 7}  # fmt: skip
    listed = vm_cli.table([guest])
    assert "147 MB" in listed and size(146_800_640) == "147 MB"  # `vm list`, the Guests screen
    for n in (0, 999, 1000, 1536, 99_499, 99_500, 10**9, 3 * 2**40):
        assert size(n) == units.size(n)
    assert [size(999), size(1536), size(99_500), size(999_500), size(3 * 2**40)] == [
        "999 B", "1.5 kB", "100 kB", "1.0 MB", "3.3 TB"
    ]  # fmt: skip


def test_every_list_a_peer_sends_is_shown_up_to_max_rows() -> None:
    """Past MAX_ROWS, one last row says how many more (the local names' total counts)."""
    extra = [["x", 1]] * (MAX_ROWS + 5)
    assert views.top_rows(extra)[-2:] == [("x", "1"), ("... 5 more", "")]
    assert len(views.top_rows(extra)) == MAX_ROWS + 1
    ups = {f"apt/{i}": {"url": "http://192.0.2.4/", "state": "up"} for i in range(MAX_ROWS + 2)}
    status = {"mirror": {"upstreams": ups}}
    state = DashboardState(["a:1"])
    state.record("a:1", 0, status=status)
    upstreams = views.upstream_rows(state.endpoints["a:1"], NOW)
    assert len(upstreams) == MAX_ROWS + 1 and upstreams[-1] == ("... 2 more", *[""] * 5)
    records = {"total": 50_000, "records": [{"name": "a"}] * (MAX_ROWS + 9)}
    assert views.record_rows(records)[-1] == ("... 49,000 more", "", "")
    assert views.record_rows({"total": 9, "records": [{"name": "a"}] * 3})[-1] == (
        "... 6 more", "", "",
    )  # fmt: skip
    fetches = {"recent": [{}] * (MAX_ROWS + 1)}
    assert views.fetch_rows(fetches, "recent", NOW)[-1] == ("... 1 more", *[""] * 6)
    listed = parse({"guests": [guest(f"g{i}", "relay", None) for i in range(MAX_ROWS + 3)]})
    assert len(listed) == MAX_ROWS
    state.record("a:1", 1, status={"process": {"services": ["relay"] * 100_000}})
    assert len(state.endpoints["a:1"].services()) == MAX_SERVICES


def test_a_line_dated_far_ahead_does_not_mark_every_later_line_late() -> None:
    """One record an endpoint (a guest taken over, a clock set wrong) dated 9999 left every
    later line, from every endpoint, reading "(arrived late)"."""
    wall = 1_767_262_908.0  # 2026-01-01T10:21:48Z
    buffer = LogBuffer(capacity=10, wall=lambda: wall)

    def line(at: str, message: str) -> dict[str, Any]:
        return {"seq": 1, "at": at, "service": "relay", "level": "INFO", "message": message}

    buffer.extend([line("9999-12-31T23:59:59.000Z", "from the future")], "guest relay")
    buffer.extend([line("2026-01-01T10:21:48.100Z", "now"), line("2026-01-01T10:21:31.000Z",
                                                                 "earlier")])  # fmt: skip
    shown = [x[TEXT].split("INFO", 1)[1].strip() for x in buffer.lines]
    assert shown[1:] == ["now", "(arrived late) earlier"]
