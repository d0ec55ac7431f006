"""What `retreatkit up` tells the organiser to give attendees, pinned."""

from __future__ import annotations

from retreatkit import startup

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
