"""The upstream health machine: exact outcomes at pinned times."""

from __future__ import annotations

from retreatkit.mirror.health import Health, State, Verdict, origin

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
    h.answered(UP)
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
    h.answered(UP)  # a 500 is an answer: the upstream is reachable
    assert not h.is_down(UP)


def test_origin() -> None:
    assert origin("http://Pypi.test/simple/x/") == "http://pypi.test:80"
    assert origin("https://files.test/a/b.whl") == "https://files.test:443"
    assert origin("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"
