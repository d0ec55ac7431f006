"""`retreatkit mirror add` stopped by Ctrl-C while the mirror it uploads to is silent: one
line and exit code 130, as every command Ctrl-C stops (README); it said "stopped" and 1,
the code of a failed upload."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from retreatkit.testing import Process


def test_ctrl_c_during_an_upload_exits_130(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + bytes(18))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes the upload, never answers
        port = silent.getsockname()[1]
        add = Process.start(
            [sys.executable, "-m", "retreatkit.cli.main", "mirror", "add",
             "--admin", f"http://127.0.0.1:{port}", str(wheel)],
            env={"RETREATKIT_TOKEN": "t" * 32, "XDG_STATE_HOME": str(tmp_path / "state")},
        )  # fmt: skip
        try:
            silent.settimeout(60)
            conn, _ = silent.accept()  # the upload is under way
            with conn:
                add.popen.send_signal(signal.SIGINT)
                code, lines = add.finish()
        finally:
            add.stop()
    assert (code, lines) == (130, ["retreatkit: interrupted"])
