"""The upstream health machine: exact outcomes at pinned times."""

from __future__ import annotations

from retreatkit.mirror.health import MAX_QUIET, Health, State, Verdict, origin

UP = "http://pypi.test:80"


def test_an_unreachable_upstream_is_left_alone_then_probed_once_at_a_time() -> None:
    h = Health(first_backoff=2.0, max_backoff=60.0)
    assert h.ask(UP, 0.0) is Verdict.GO  # never tried: go
    h.failed(UP, 0.0, "no answer within 7 s", Verdict.GO)
    assert h.get(UP).state is State.DOWN and h.get(UP).last_error == "no answer within 7 s"
    assert h.ask(UP, 1.9) is Verdict.WAIT  # backing off: nobody waits on it
    assert h.ask(UP, 2.0) is Verdict.PROBE  # one request finds out
    assert h.ask(UP, 2.0) is Verdict.WAIT  # and only one
    h.failed(UP, 9.0, "no answer within 7 s", Verdict.PROBE)
    assert h.retry_in(UP, 9.0) == 4.0  # the backoff doubles
    assert h.ask(UP, 12.9) is Verdict.WAIT
    assert h.ask(UP, 13.0) is Verdict.PROBE
    h.answered(UP, 13.5)
    assert h.get(UP).state is State.UP and h.ask(UP, 13.0) is Verdict.GO


def test_the_backoff_is_capped() -> None:
    h = Health(first_backoff=2.0, max_backoff=10.0)
    now = 0.0
    h.failed(UP, now, "x", Verdict.GO)
    waits = []
    for _ in range(5):
        now += h.retry_in(UP, now)
        assert h.ask(UP, now) is Verdict.PROBE
        h.failed(UP, now, "x", Verdict.PROBE)
        waits.append(h.retry_in(UP, now))
    assert waits == [4.0, 8.0, 10.0, 10.0, 10.0]


def test_requests_that_set_out_before_it_went_down_do_not_lengthen_the_backoff() -> None:
    h = Health(first_backoff=2.0)
    for _ in range(20):  # twenty requests in flight all time out together
        h.failed(UP, 5.0, "no answer", Verdict.GO)
    assert h.retry_in(UP, 5.0) == 2.0


def test_a_probe_cancelled_lets_the_next_request_probe() -> None:
    h = Health()
    h.failed(UP, 0.0, "x", Verdict.GO)
    assert h.ask(UP, 5.0) is Verdict.PROBE
    h.abandoned(UP, Verdict.PROBE)
    assert h.ask(UP, 5.0) is Verdict.PROBE


def test_an_error_status_means_up() -> None:
    h = Health()
    h.failed(UP, 0.0, "x", Verdict.GO)
    h.answered(UP, 1.0)  # a 500 is an answer: the upstream is reachable
    assert not h.is_down(UP)


SILENT = "no answer within 10 s"


def test_one_silent_path_fails_alone_however_often_it_is_asked() -> None:
    """A stuck backend, one object a CDN node never sends: its requests fail, and the
    upstream is not down for the rest of its packages."""
    h = Health()
    h.answered(UP, 0.0)
    for n in range(10):  # a client's retries, and other clients asking for the same file
        assert not h.silent(UP, "http://pypi.test/f/a.whl", 1.0 + n, 11.0 + n, SILENT, Verdict.GO)
    assert h.ask(UP, 30.0) is Verdict.GO and h.get(UP).state is State.UP
    assert h.get(UP).last_error is None  # nothing to tell the organiser of the upstream


def test_silence_on_three_different_requests_with_no_answer_between_is_down() -> None:
    """A dead uplink behind a proxy or portal that still accepts: silent for any path."""
    h = Health(first_backoff=2.0)
    h.answered(UP, 0.0)
    assert not h.silent(UP, "http://pypi.test/simple/a/", 1.0, 11.0, SILENT, Verdict.GO)
    assert not h.silent(UP, "http://pypi.test/simple/b/", 2.0, 12.0, SILENT, Verdict.GO)
    assert h.ask(UP, 12.0) is Verdict.GO
    assert h.silent(UP, "http://pypi.test/simple/c/", 3.0, 13.0, SILENT, Verdict.GO)
    u = h.get(UP)
    assert (u.state, u.down_since, u.last_error) == (State.DOWN, 13.0, SILENT)
    assert h.ask(UP, 14.0) is Verdict.WAIT and h.retry_in(UP, 13.0) == 2.0
    # those that set out before it went down are not news: the backoff stays as it was
    assert h.silent(UP, "http://pypi.test/simple/d/", 4.0, 14.0, SILENT, Verdict.GO)
    assert h.retry_in(UP, 14.0) == 1.0


def test_an_answer_between_starts_the_count_again() -> None:
    h = Health()
    assert not h.silent(UP, "http://pypi.test/a", 0.0, 10.0, SILENT, Verdict.GO)
    assert not h.silent(UP, "http://pypi.test/b", 1.0, 11.0, SILENT, Verdict.GO)
    h.answered(UP, 12.0)  # another path answered: those two were their own
    assert not h.silent(UP, "http://pypi.test/c", 13.0, 23.0, SILENT, Verdict.GO)
    assert not h.silent(UP, "http://pypi.test/d", 14.0, 24.0, SILENT, Verdict.GO)
    assert h.get(UP).state is State.UP
    assert h.silent(UP, "http://pypi.test/e", 15.0, 25.0, SILENT, Verdict.GO)


def test_a_silence_asked_before_the_last_answer_counts_nothing() -> None:
    """Another request answered while this one waited: the upstream is there, and this
    path is the silent one (the nameserver's rule for a silent zone)."""
    h = Health()
    h.answered(UP, 5.0)
    for path in ("a", "b", "c"):  # asked at 4, before the answer at 5; given up at 14
        assert not h.silent(UP, f"http://pypi.test/{path}", 4.0, 14.0, SILENT, Verdict.GO)
    assert h.get(UP).state is State.UP and not h.get(UP).silent


def test_a_silent_probe_keeps_it_down_and_doubles_the_backoff() -> None:
    h = Health(first_backoff=2.0)
    h.failed(UP, 0.0, "connection refused", Verdict.GO)
    assert h.ask(UP, 2.0) is Verdict.PROBE
    assert h.silent(UP, "http://pypi.test/simple/a/", 2.0, 12.0, SILENT, Verdict.PROBE)
    u = h.get(UP)
    assert (u.state, u.last_error, h.retry_in(UP, 12.0)) == (State.DOWN, SILENT, 4.0)
    assert h.ask(UP, 16.0) is Verdict.PROBE
    h.answered(UP, 17.0)  # back: and a later silence is one path's again
    assert not h.silent(UP, "http://pypi.test/simple/a/", 18.0, 28.0, SILENT, Verdict.GO)
    assert h.get(UP).state is State.UP


def test_a_silent_path_is_quiet_for_a_backoff_then_asked_again() -> None:
    """A client's retries of the path that was silent (uv, apt-get and npm retry a 504)
    are answered at once, not each after the whole bound; the rest of the upstream's
    paths are asked as ever."""
    a, b = "http://pypi.test/simple/a/", "http://pypi.test/simple/b/"
    h = Health(first_backoff=2.0)
    h.silent(UP, a, 0.0, 10.0, SILENT, Verdict.GO)
    assert (h.ask(UP, 11.9, a), h.ask(UP, 11.9, b), h.ask(UP, 11.9)) == (
        Verdict.QUIET, Verdict.GO, Verdict.GO,
    )  # fmt: skip
    quiet = h.quiet(UP, a)
    assert quiet is not None and (quiet.why, quiet.retry_at) == (SILENT, 12.0)
    assert h.ask(UP, 12.0, a) is Verdict.GO  # then one asks it again
    h.silent(UP, a, 12.0, 22.0, SILENT, Verdict.GO)  # silent again: the backoff doubles
    assert h.ask(UP, 25.9, a) is Verdict.QUIET and h.ask(UP, 26.0, a) is Verdict.GO
    h.answered(UP, 27.0, a)  # it mended: asked as any other from now on
    assert h.quiet(UP, a) is None and h.ask(UP, 27.0, a) is Verdict.GO


def test_the_quiet_paths_kept_are_bounded() -> None:
    """Clients choose the paths: an upstream that never answers a great many of them,
    answering others between, holds no more than MAX_QUIET of them, the newest."""
    h = Health()
    for n in range(MAX_QUIET + 1):
        h.silent(UP, f"http://pypi.test/{n}", float(n), n + 0.5, SILENT, Verdict.GO)
        h.answered(UP, n + 0.6)
    assert len(h.get(UP).quiet) == MAX_QUIET and h.quiet(UP, "http://pypi.test/0") is None
    assert h.get(UP).state is State.UP


def test_origin() -> None:
    assert origin("http://Pypi.test/simple/x/") == "http://pypi.test:80"
    assert origin("https://files.test/a/b.whl") == "https://files.test:443"
    assert origin("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"
