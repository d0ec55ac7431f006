from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from retreatkit.mirror import storecheck
from retreatkit.mirror.blobs import IntegrityError
from retreatkit.mirror.memory import SMALL, HotCache
from retreatkit.mirror.records import Blob, Object
from retreatkit.mirror.store import Store, valid_hex


def test_a_mismatch_is_never_published(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"wheel bytes"
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        store.put_bytes(data, {"sha256": wrong})
    assert list((tmp_path / "blobs").rglob("*.*")) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    digest = store.put_bytes(data, {"sha256": hashlib.sha256(data).hexdigest()})
    assert store.has_blob(digest) and store.read(digest) == data
    store.close()


def test_every_promised_hash_is_checked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"archive"
    good = {
        "md5": hashlib.md5(data).hexdigest(),
        "sha512": hashlib.sha512(data).hexdigest(),
    }
    store.put_bytes(data, good)
    with pytest.raises(IntegrityError, match="md5 mismatch"):
        store.put_bytes(data, {**good, "md5": "0" * 32})
    store.close()


def test_the_check_after_a_restart_drops_rot(tmp_path: Path) -> None:
    store = Store(tmp_path)
    good, bad = store.put_bytes(b"fine"), store.put_bytes(b"will rot")
    store.close()
    store.blob_path(bad).write_bytes(b"rotten")
    store = Store(tmp_path)  # a restart: nothing is trusted until re-hashed
    assert good not in store.verified
    check = storecheck.check_all(store)
    assert (check.state, check.files, check.checked, check.dropped) == ("done", 1, 2, 1)
    assert store.has_blob(good) and not store.has_blob(bad)
    assert good in store.verified
    store.close()


@pytest.mark.parametrize(
    ("algo", "value", "ok"),
    [
        ("sha256", "a" * 64, True),
        ("sha256", "A" * 64, False),
        ("sha256", "a" * 63, False),
        ("md5", "0" * 32, True),
        ("sha1", "0" * 40, True),
        ("sha3", "0" * 64, False),
        ("sha256", "../" + "a" * 61, False),
    ],
)
def test_valid_hex(algo: str, value: str, ok: bool) -> None:
    assert valid_hex(algo, value) is ok


def _blob(body: bytes) -> Blob:
    return Blob(Object("k", "d", len(body), "t", 0.0), Path("/nonexistent"), body)


def test_hot_cache_is_bounded_by_bytes() -> None:
    hot = HotCache(limit=10)
    for name in "abc":
        hot.put(name, _blob(b"xxxx"))
    assert hot.get("a") is None  # the oldest went first
    assert hot.get("c") is not None and hot.size == 8
    big = HotCache(limit=10 * SMALL)
    big.put("big", _blob(b"x" * (SMALL + 1)))
    assert big.get("big") is None  # large files go by sendfile, never into memory
