"""What is news for the log: once a while per key, and a bounded number of keys."""

from __future__ import annotations

from retreatkit.lognews import News


def test_a_key_is_news_once_a_while() -> None:
    news = News(again=60, most=10)
    assert news.news("a", 0) and not news.news("a", 59) and news.news("a", 60)
    assert news.news("b", 59)


def test_past_the_bound_a_new_key_waits_for_an_old_one_to_age_out() -> None:
    news = News(again=60, most=2)
    assert news.news("a", 0) and news.news("b", 30)
    assert not news.news("c", 40)  # a flood of new keys: silent, and nothing grows
    assert len(news.logged) == 2
    assert news.news("c", 61)  # "a" aged out
    assert not news.news("d", 62)
