"""How the log names a file being fetched (no I/O)."""

from __future__ import annotations

from retreatkit.mirror.fill import Fill
from retreatkit.mirror.records import Source


def test_the_log_names_a_file_by_its_own_name_first() -> None:
    """A log panel as narrow as the dashboard's cuts a line's end: PyPI's store names
    start with a 64-digit hash, so the file's own name comes first."""
    digest = "ab" * 32

    def fill(name: str, url: str) -> Fill:
        return Fill(Source(name, url, {"sha256": digest}, "pypi", "demo"), 0.0)

    wheel = "demo_pkg-1.0-py3-none-any.whl"
    assert fill(f"pypi/{digest}/{wheel}", f"http://up/files/{wheel}").label == (
        f"{wheel} from pypi"
    )
    assert fill(f"opam/md5/{digest[:32]}", "http://up/hello-1.0.tar.gz").label == (
        f"hello-1.0.tar.gz as opam/md5/{digest[:32]}"
    )
