"""The log file `retreatkit up` writes while its dashboard holds the terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

import pytest

from retreatkit import serve
from retreatkit.admin.process import ProcessInfo
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


def test_the_log_file_and_those_rotated_out_are_the_organisers_alone(tmp_path: Path) -> None:
    """It names attendees' addresses. One an earlier version left readable is tightened."""
    path = tmp_path / "retreatkit.log"
    path.write_text("from before\n")
    path.chmod(0o644)
    handler = serve.log_file(path)
    record = logging.LogRecord("retreatkit", logging.INFO, __file__, 1, "a line", None, None)
    try:
        handler.emit(record)
        handler.doRollover()
        handler.emit(record)
    finally:
        handler.close()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"retreatkit.log": 0o600, "retreatkit.log.1": 0o600}
    assert (tmp_path / "retreatkit.log.1").read_text().startswith("from before\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk needs a mount (root)")
def test_a_log_file_not_written_is_in_status_until_a_write_works() -> None:
    """The line on the Logs screen scrolls away; /status (so the dashboard's alarms)
    says it while it lasts."""
    logger = logging.getLogger("retreatkit")
    with scratch_disk("1m") as disk:
        handler = serve.log_file(disk / "retreatkit.log")
        logger.addHandler(handler)
        try:
            fill(disk)
            logger.warning("not written")
            said = ProcessInfo(["nameserver"]).status()["warnings"]
            (disk / "filler").unlink()
            logger.warning("written")
            after = ProcessInfo(["nameserver"]).status()["warnings"]
        finally:
            logger.removeHandler(handler)
            handler.close()
    path = disk / "retreatkit.log"
    assert said == [f"the log {path} cannot be written: No space left on device"]
    assert after == []
