"""What the mirror holds in memory for index pages: each page once, however many requests
hold it, a bound on the bytes of pages on their way to clients, and one on those of pages
being read and processed (pure)."""

from __future__ import annotations

import gc

from retreatkit.mirror.budget import Budget
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


def test_pages_draw_from_the_budget_and_wait_in_the_order_they_asked() -> None:
    budget = Budget(limit=100)
    assert budget.ask("a", 60)
    assert not budget.ask("big", 80)  # no room: it waits
    assert not budget.ask("small", 10)  # room, but behind big: a large page is not overtaken
    assert (budget.used, budget.waiting("big"), budget.waiting("small")) == (60, True, True)
    assert budget.release("a") == ["big", "small"]  # 80, then 10 more: both fit
    assert budget.used == 90
    assert budget.release("big") == [] and budget.release("small") == []
    assert budget.used == 0


def test_a_page_larger_than_the_budget_goes_alone() -> None:
    budget = Budget(limit=10)
    assert budget.ask("huge", 1000)  # nothing else held: it goes, past the limit
    assert not budget.ask("next", 1)
    assert budget.release("huge") == ["next"]
    assert not budget.ask("huge again", 1000)  # now it waits until it is alone
    assert budget.release("next") == ["huge again"]


def test_pages_holding_bytes_grow_before_new_ones_and_the_oldest_never_waits() -> None:
    """A page whose length was not said draws as it comes: one holding bytes goes before
    pages not started, and the one that has held longest never waits, so it ends and
    frees what it holds however the others stand."""
    budget = Budget(limit=100)
    assert budget.ask("a", 50) and budget.ask("b", 40)
    assert not budget.grow("b", 30)  # 120 > 100, and a is older
    assert budget.grow("a", 100)  # the oldest: past the limit rather than wait
    assert not budget.ask("c", 0)  # over the limit: a new page waits its turn
    assert budget.holds("a") == 150 and budget.used == 190
    assert budget.release("a") == ["b", "c"]  # b's growth first, then the new one
    assert (budget.holds("b"), budget.holds("c"), budget.used) == (70, 0, 70)
    assert not budget.ask("d", 40)  # 110 > 100
    assert budget.grow("b", 35)  # b is the oldest now
    assert budget.release("c") == []  # d still does not fit
    assert budget.release("b") == ["d"]


def test_a_page_that_stops_waiting_lets_the_next_one_go() -> None:
    budget = Budget(limit=100)
    assert budget.ask("a", 90)
    assert not budget.ask("big", 50) and not budget.ask("small", 5)
    assert budget.release("big") == ["small"]  # its client left: nothing of it counted
    assert (budget.used, budget.waiting("big")) == (95, False)
