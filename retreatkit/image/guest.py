"""The service a guest runs, with its admin endpoint; also the build's import probe.

The probe runs the same code on the build host under the guest's interpreter, serves one
request of each admin read, stops, and reports every module it loaded: that is what
the image must hold.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from retreatkit import config, hosting, loop, serve
from retreatkit.image import spec as specs

STATE = "/run/state"  # XDG_STATE_HOME in the guest: the admin token lives there


def services(name: str, cfg: dict[str, Any]) -> list[serve.Service]:
    """The same services `retreatkit NAME` would run, from a retreat.toml-shaped dict; a
    nameserver's list files are the copies its host carries (and renews on a reload)."""
    chosen = hosting.services(argparse.Namespace(command=name), cfg, on_lan=False)
    for service in chosen:
        settings = getattr(service, "settings", None)
        if service.name == "nameserver" and settings is not None:
            settings.carried = specs.FILES_DIR
    return chosen


def write_token(token: str, state: Path) -> None:
    """The admin token where the admin endpoint looks for it (docs/admin-api.md)."""
    folder = state / "retreatkit"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / "admin-token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")


def run(name: str, cfg: dict[str, Any], token: str) -> int:
    os.environ["XDG_STATE_HOME"] = STATE
    write_token(token, Path(STATE))
    chosen = services(name, cfg)
    admin_at = config.host_port(cfg["admin"]["listen"])
    serve.setup_logging()
    return loop.run(lambda: _serve_until_asked(chosen, admin_at))


async def _serve_until_asked(chosen: list[serve.Service], admin_at: tuple[str, int]) -> int:
    """Serve until a signal, or until the host writes the stop command on the console.

    The command may come while the services are still starting, before serve() has
    signal handlers (and PID 1 ignores signals it does not handle): cancelling the task
    stops whatever has started, at any point.
    """
    task = asyncio.ensure_future(serve.serve(chosen, admin_at, _say, on_lan=False))
    watcher = asyncio.ensure_future(_watch_console(task))
    try:
        return await task
    except asyncio.CancelledError:
        return 0
    finally:
        watcher.cancel()


async def _watch_console(task: asyncio.Future[int]) -> None:
    reader = asyncio.StreamReader(limit=1024)
    loop_ = asyncio.get_running_loop()
    await loop_.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == specs.STOP_COMMAND.encode():
            _say("retreatkit: stopping at the host's request")
            task.cancel()
            return


def _say(line: str) -> None:
    """A line for the organiser, as a local process says one: on the console (stderr, the
    line alone) and a record on `/logs`, so the dashboard's Logs screen has the guest's
    start-up lines too. Handled whatever the level: the host waits for `Admin on` on the
    console, and a quieter level set at run time must not hide the stop it asked for."""
    said = logging.getLogger("retreatkit")
    said.handle(said.makeRecord(said.name, logging.INFO, __file__, 0, line, (), None,
                                extra=serve.SAID))  # fmt: skip


def probe(name: str) -> None:
    """Serve `name` on loopback, read each admin page once, stop (the build's probe)."""
    cfg = config.load(None)
    with tempfile.TemporaryDirectory() as scratch:
        cfg["admin"]["listen"] = "127.0.0.1:0"
        cfg[name]["listen"] = "127.0.0.1:0"
        if name == "mirror":
            cfg["mirror"].update(
                store=f"{scratch}/store",
                pypi="http://127.0.0.1:9/simple/",
                opam="http://127.0.0.1:9/opam",
            )
        if name == "nameserver":
            cfg["nameserver"]["upstreams"] = ["127.0.0.1:9"]
        chosen = services(name, cfg)
        reading: list[asyncio.Future[None]] = []
        # codecs are found by name when first used (lists are read as utf-8-sig, names
        # encoded as IDNA): look them up now so the image holds them
        for codec in ("utf-8-sig", "idna", "ascii", "latin-1"):
            codecs.lookup(codec)

        def say(line: str) -> None:
            if line.startswith("Admin on http://"):
                host, port = config.host_port(line.split("/")[2])
                reading.append(asyncio.ensure_future(read_all(host, port)))

        async def read_all(host: str, port: int) -> None:
            import aiohttp  # the guest itself loads it after its service answers

            # the services hand file work to asyncio's default executor (to_thread)
            await asyncio.to_thread(len, "")
            # through aiohttp's client, which the mirror and the nameserver use upstream
            async with aiohttp.ClientSession() as session:
                for path in ("/healthz", "/status", "/metrics", "/loglevel"):
                    async with session.get(f"http://{host}:{port}{path}") as response:
                        await response.read()
            os.kill(os.getpid(), signal.SIGTERM)

        loop.run(lambda: serve.serve(chosen, ("127.0.0.1", 0), say, on_lan=False))


if __name__ == "__main__":
    probe(sys.argv[1])
    found = {}
    for module_name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        found[module_name] = getattr(spec, "origin", None)
    print(json.dumps(found))
