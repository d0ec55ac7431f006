"""The log file `retreatkit up` writes while its dashboard holds the terminal."""

from __future__ import annotations

import contextlib
import logging
import os

import pytest

from retreatkit import serve
from retreatkit.testing import fill, scratch_disk


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a mount (root)")
def test_a_full_disk_under_the_log_file_never_writes_on_the_dashboards_screen(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Python reports a record it cannot write on stderr, `--- Logging error ---` and a
    traceback each time: under `up` that is the dashboard's screen. The kit says it once,
    as a line the Logs screen shows, and says it again only after a write worked."""
    logger = logging.getLogger("retreatkit")
    with scratch_disk("1m") as disk:
        handler = serve.log_file(disk / "retreatkit.log")
        logger.addHandler(handler)
        try:
            fill(disk)
            for n in range(100):
                logger.warning("line %d: %s", n, "x" * 200)
            (disk / "filler").unlink()  # room again: written, then a new spell of failures
            logger.warning("written")
            fill(disk)
            for n in range(100):
                logger.warning("line %d: %s", n, "x" * 200)
        finally:
            logger.removeHandler(handler)
            with contextlib.suppress(OSError):  # what could not be flushed
                handler.close()
    assert capfd.readouterr().err == ""
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot")]
    assert said == 2 * [
        f"cannot write the log file {disk / 'retreatkit.log'} (No space left on device); the"
        " Logs screen still has every line"
    ]
