"""What the mirror holds in memory for index pages: each page once, however many requests
hold it, and a bound on the bytes of pages on their way to clients (pure)."""

from __future__ import annotations

import gc

from retreatkit.mirror.memory import Page, Renders, Sending


def test_a_page_goes_to_any_number_of_clients_as_one_and_others_wait_past_the_bound() -> None:
    sending = Sending(limit=250)
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    for _ in range(1000):  # clients that never read: one page's bytes
        assert sending.take(a)
    assert (sending.bytes, len(sending)) == (100, 1)
    assert sending.take(b)
    assert not sending.take(c)  # 300 > 250: refused, and nothing counted
    assert (sending.bytes, len(sending)) == (200, 2)
    assert sending.take(a)  # on its way already: it costs nothing more
    sending.done(b)
    assert sending.take(c)
    for _ in range(1001):
        sending.done(a)
    sending.done(c)
    assert (sending.bytes, len(sending)) == (0, 0)


def test_a_page_larger_than_the_bound_goes_alone() -> None:
    sending = Sending(limit=10)
    big = b"x" * 100
    assert sending.take(big) and sending.take(big)
    assert not sending.take(b"y")
    sending.done(big)
    sending.done(big)
    assert sending.take(b"y") and sending.bytes == 1


def test_equal_bytes_in_two_objects_are_two_pages() -> None:
    """What is counted is what is held: two copies of the same bytes are both."""
    sending = Sending(limit=1000)
    one, other = b"p" * 100, bytes(bytearray(b"p" * 100))
    assert one == other and one is not other
    assert sending.take(one) and sending.take(other)
    assert sending.bytes == 200


def test_a_page_still_held_is_found_though_the_cache_has_no_room_for_it() -> None:
    renders = Renders(limit=150)
    big = Page(b"b" * 1000, '"big"', "text/html")  # larger than all the cache keeps
    renders.put(("big",), big)
    assert renders.get(("big",)) is big  # a request sending it still holds it
    small = Page(b"s" * 100, '"small"', "text/html")
    renders.put(("small",), small)
    renders.put(("other",), Page(b"o" * 100, '"other"', "text/html"))  # pushes small out
    assert renders.get(("small",)) is small  # kept no more, held still: the same page
    del big, small
    gc.collect()
    assert renders.get(("big",)) is None and renders.get(("small",)) is None
    assert renders.get(("other",)) is not None  # the cache's own
