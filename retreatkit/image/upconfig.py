"""`[images]` as `retreatkit up` reads it: every key checked before anything starts.

Each key is checked whether or not `run` names a service: a setting that cannot work is
a slip the organiser meets the day they add a service to `run`, far from where it was
made. What depends on this host rather than on the value (passt installed, the mirror's
disk writable) is checked only for what `run` asks for. Every problem at once, one line
each, as the rest of retreat.toml's check does (startup.check_config).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from retreatkit import config
from retreatkit.image import network, qemu, run
from retreatkit.image import spec as specs


def problems(cfg: dict[str, Any]) -> list[str]:
    """Every `[images]` value `up` cannot work with, each as one line naming its key."""
    images = cfg["images"]
    found: list[str] = []
    wanted = [s for s in images["run"] if s in specs.SPECS]
    for service in dict.fromkeys(images["run"]):
        if service not in specs.SPECS:
            found.append(f"no image for {service!r}; one of {', '.join(specs.SPECS)}")
    twice = next((s for i, s in enumerate(images["run"]) if s in images["run"][:i]), None)
    if twice is not None:  # its second guest was refused only once the first one ran
        found.append(f"[images] run names {twice} twice: each service runs once")
    for service in [*dict.fromkeys(wanted)] or [None]:  # one line: the first it is short for
        problem = specs.memory_problem(images["memory"], "[images] memory =", service)
        if problem is not None:
            found.append(problem)
            break
    if images["kernel"] not in specs.KERNELS:
        found.append(
            f"[images] kernel must be one of {', '.join(specs.KERNELS)}, not {images['kernel']!r}"
        )
    if images["network"] not in network.CHOICES or wanted:
        try:  # with a guest to run, also that what it names is installed
            network.choose(str(images["network"]))
        except network.NetworkError as exc:
            found.append(str(exc))
    folder = Path(images["dir"]) if images["dir"] else None
    if folder is not None and folder.exists() and not folder.is_dir():
        found.append(f"[images] dir: {folder} is a file; name a folder")
    size = run.size_problem(str(images["disk_size"]))
    if size is not None:
        found.append(f"[images] {size}")
    if "mirror" in wanted and size is None:
        disk = mirror_disk(cfg)
        problem = run.disk_problem(disk, str(images["disk_size"]))
        if problem is not None:  # said before any guest boots, not after the others
            found.append(f"[images] {problem}")
    for service in dict.fromkeys(wanted):
        problem = listen_problem(cfg, service)
        if problem is not None:
            found.append(problem)
    return found


def mirror_disk(cfg: dict[str, Any]) -> Path:
    """The mirror guest's store disk: `[images] disk`, else beside where the in-process
    mirror keeps its store."""
    from retreatkit.mirror.hosted import default_store

    given = cfg["images"]["disk"]
    if given:
        return Path(given)
    with contextlib.suppress(OSError):  # if it cannot be, disk_problem says why
        default_store().parent.mkdir(parents=True, exist_ok=True)
    return default_store().parent / "mirror.disk"


def forwards(cfg: dict[str, Any], service: str) -> list[str]:
    """The service's guest forwards, from the address its own section's `listen` gives
    (ValueError if its host is not an IPv4 address: qemu and passt take no other)."""
    image = specs.spec(service)
    host, port = config.host_port(cfg[service]["listen"], image.ports[0][1])
    return [str(qemu.Forward.parse(f"{proto}:{host}:{port}:{guest}"))
            for proto, guest in image.ports]  # fmt: skip


def listen_problem(cfg: dict[str, Any], service: str) -> str | None:
    try:
        forwards(cfg, service)
    except ValueError:
        listen = cfg[service]["listen"]
        return (
            f"[{service}] listen = {listen!r}: a service run as an image listens on an"
            " IPv4 address of this host (0.0.0.0: all of them), not a name"
        )
    return None
