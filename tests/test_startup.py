"""What `retreatkit up` tells the organiser to give attendees, pinned."""

from __future__ import annotations

import pytest

from retreatkit import config, startup

BOUND = {"relay": ("0.0.0.0", 9000), "mirror": ("0.0.0.0", 28000)}
PAGE = "(its page shows the pip, uv, opam, npm and apt lines)"


def test_the_mirror_line_is_the_public_url_when_the_organiser_set_one() -> None:
    lines = startup.attendee_lines(
        BOUND, "10.231.0.1", named=False, public={"mirror": "http://mirror.retreat.lan:28000/"}
    )
    assert lines == [
        "bob relay: 10.231.0.1:9000",
        f"package mirror: http://mirror.retreat.lan:28000/ {PAGE}",
    ]


def test_the_mirror_line_without_a_public_url() -> None:
    assert startup.attendee_lines(BOUND, "10.231.0.1", named=False, public={"mirror": ""}) == [
        "bob relay: 10.231.0.1:9000",
        f"package mirror: http://10.231.0.1:28000/ {PAGE}",
    ]
    assert startup.attendee_lines(BOUND, "10.231.0.1", named=True)[1] == (
        f"package mirror: http://mirror.retreat.lan:28000/ {PAGE}"
    )


def test_a_public_url_is_the_organisers_word_even_on_loopback() -> None:
    """Behind a reverse proxy the mirror listens on loopback: no "cannot reach it" note."""
    lines = startup.attendee_lines(
        {"mirror": ("127.0.0.1", 8000)}, "10.0.0.2", named=False,
        public={"mirror": "http://mirror.retreat.lan"},
    )  # fmt: skip
    assert lines == [f"package mirror: http://mirror.retreat.lan/ {PAGE}"]


@pytest.mark.parametrize(
    ("bound", "line"),
    [
        (("0.0.0.0", 53), "DNS server: 10.0.0.2 port 53 (hand it out by DHCP)"),
        # DHCP names a server, never a port: clients ask 53, so 5300 cannot be handed out
        (("0.0.0.0", 5300), "DNS server: 10.0.0.2 port 5300 (DHCP needs port 53: listen on"
                            " 0.0.0.0:53)"),
        (("10.0.0.2", 5300), "DNS server: 10.0.0.2 port 5300 (DHCP needs port 53: listen on"
                             " 10.0.0.2:53)"),
        (("::", 5300), "DNS server: 10.0.0.2 port 5300 (DHCP needs port 53: listen on [::]:53)"),
        (("127.0.0.1", 5300), "DNS server: 127.0.0.1 port 5300 (loopback only: attendees"
                              " cannot reach it)"),
    ],
)  # fmt: skip
def test_the_dns_line_says_what_dhcp_can_hand_out(bound: tuple[str, int], line: str) -> None:
    assert startup.attendee_lines({"nameserver": bound}, "10.0.0.2", named=True) == [line]


def test_each_service_is_reached_at_its_own_address_not_the_admin_endpoints() -> None:
    bound = {**BOUND, "nameserver": ("0.0.0.0", 5300), "relay": ("127.0.0.1", 9000)}
    assert startup.attendee_addresses(bound, "10.231.0.1") == {
        "relay": "127.0.0.1:9000",  # "loopback only" is said under Attendees use
        "mirror": "10.231.0.1:28000",
        "nameserver": "10.231.0.1:5300",
    }
    public = {"relay": "", "mirror": "http://mirror.retreat.lan/"}
    assert startup.attendee_addresses(BOUND, "fd00::2", public) == {
        "relay": "[fd00::2]:9000",
        "mirror": "http://mirror.retreat.lan/",
    }


def test_ctrl_c_before_the_services_take_it_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while `up` still imports and checks (the first second or so) reaches no
    handler of ours yet: one line and the shell's code for an interrupt, no traceback."""
    from retreatkit import hosting
    from retreatkit.cli import main

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(hosting, "services", interrupted)
    listen = ["--admin", "127.0.0.1:0", "--relay-listen", "127.0.0.1:0"]
    assert main.main(["up", "--no-tui", "--address", "127.0.0.1", *listen]) == 130
    assert capsys.readouterr().err == "retreatkit: interrupted\n"


def test_the_relay_and_the_mirror_are_named_where_they_listen() -> None:
    """Bound to 10.201.0.1 alone, the relay was named after another interface's address
    (the one `up` chose for the LAN), where attendees found nothing listening."""
    from retreatkit import config
    from retreatkit.image import vmservice
    from retreatkit.lanaddress import CONFIGURED, LanAddress

    cfg = config.load(None)
    cfg["relay"]["listen"] = "10.201.0.1:19600"
    cfg["mirror"]["listen"] = "0.0.0.0:28000"  # every address: the LAN's
    chosen = LanAddress("192.0.2.2", "the default route's interface")
    assert startup.own_names(cfg, chosen) == {
        "relay.retreat.lan": "10.201.0.1",
        "mirror.retreat.lan": "192.0.2.2",
    }
    cfg["mirror"]["listen"] = "127.0.0.1:28000"  # loopback names no address for the LAN
    assert startup.own_names(cfg, chosen)["mirror.retreat.lan"] == "192.0.2.2"
    cfg["mirror"]["listen"] = "vm:28000"  # a name: what it names is not ours to say
    assert startup.own_names(cfg, chosen)["mirror.retreat.lan"] == "192.0.2.2"
    # the organiser said which address: every name is there, as `up` says
    configured = LanAddress("10.201.0.9", CONFIGURED)
    assert set(startup.own_names(cfg, configured).values()) == {"10.201.0.9"}
    # the nameserver run as an image gives the same names
    cfg["mirror"]["listen"] = "0.0.0.0:28000"
    cfg["images"]["run"] = ["relay", "nameserver"]
    [*_, nameserver] = vmservice.guests_for_up(cfg, None, chosen).autostart
    assert nameserver.records == startup.own_names(cfg, chosen)


def test_a_limit_that_would_turn_every_client_away_names_its_key() -> None:
    """Every limit and timeout of the relay and the mirror is checked, not only some: a
    mirror with `per_address = 0` (0 reads as "no limit" beside `max_size_bytes` and
    `rate_limit`) started, and refused every attendee without a line saying why."""
    cfg = config.load(None)
    cfg["relay"] |= {"waiting_per_ip": 0, "failed_joins": -1, "pairs": 0}
    cfg["relay"]["failed_join_wait"] = -1.0
    cfg["mirror"] |= {
        "per_address": 0,
        "idle_timeout": 0.0,
        "headers_timeout": -1.0,
        "index_timeout": 0.0,
        "page_stall_timeout": float("nan"),
        "max_pages_sending_bytes": 0,
        "max_pages_reading_bytes": -1,
        "keep_free_bytes": -1,
    }
    assert startup.check_config(cfg, ["relay", "mirror"], {"relay.pairs": "--pairs"}) == [
        "[relay] waiting_per_ip must be above 0, not 0",
        "[relay] failed_joins must be above 0, not -1",
        "[relay] pairs (or --pairs) must be above 0, not 0",
        "[mirror] headers_timeout must be above 0, not -1.0",
        "[mirror] index_timeout must be above 0, not 0.0",
        "[mirror] idle_timeout must be above 0, not 0.0",
        "[mirror] page_stall_timeout must be a finite number above 0, not nan",
        "[mirror] per_address must be above 0, not 0",
        "[mirror] max_pages_sending_bytes must be above 0, not 0",
        "[mirror] max_pages_reading_bytes must be above 0, not -1",
        "[relay] failed_join_wait must be 0 or more, not -1.0",
        "[mirror] keep_free_bytes must be 0 or more, not -1",
    ]
    assert startup.check_config(config.load(None), ["relay", "mirror"], {}) == []


def test_every_number_a_service_reads_is_checked() -> None:
    """A new limit or timeout is added to one of the two tables, or this fails."""
    numbers = {
        (section, key)
        for section in ("relay", "mirror", "nameserver", "dashboard")
        for key, value in config.DEFAULTS[section].items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    checked = {
        (section, key)
        for table in (startup.POSITIVE, startup.NOT_NEGATIVE)
        for section, keys in table.items()
        for key in keys
    }
    assert numbers == checked
