"""The memory this process may use, from file texts given in place of /proc and /sys:
the machine's, or a cgroup's limit (v2 or v1) where smaller."""

from __future__ import annotations

import pytest

from retreatkit import memory
from retreatkit.memory import limit_files, parse_limit, usable_memory

MB = 1024 * 1024
GB = 1024 * MB
V1_NO_LIMIT = "9223372036854771712\n"  # what v1 reads when nothing is set


def files(texts: dict[str, str]) -> memory.Reader:
    return texts.get


def test_without_cgroup_files_it_is_the_machine() -> None:
    assert usable_memory(16 * GB, files({})) == 16 * GB
    assert usable_memory(None, files({})) is None


def test_a_v2_limit_on_its_own_cgroup_wins_when_smaller() -> None:
    read = files(
        {
            "/proc/self/cgroup": "0::/system.slice/retreatkit.service\n",
            "/sys/fs/cgroup/system.slice/retreatkit.service/memory.max": f"{512 * MB}\n",
            "/sys/fs/cgroup/system.slice/memory.max": "max\n",
        }
    )
    assert usable_memory(16 * GB, read) == 512 * MB
    assert usable_memory(256 * MB, read) == 256 * MB  # the machine is smaller still
    assert usable_memory(None, read) == 512 * MB


def test_max_is_no_limit() -> None:
    read = files({"/proc/self/cgroup": "0::/user.slice\n", "/sys/fs/cgroup/memory.max": "max\n"})
    read_own = files(
        {"/proc/self/cgroup": "0::/user.slice\n", "/sys/fs/cgroup/user.slice/memory.max": "max"}
    )
    assert usable_memory(8 * GB, read) == usable_memory(8 * GB, read_own) == 8 * GB


def test_a_parents_limit_caps_its_children() -> None:
    read = files(
        {
            "/proc/self/cgroup": "0::/event.slice/dns.service\n",
            "/sys/fs/cgroup/event.slice/dns.service/memory.max": "max\n",
            "/sys/fs/cgroup/event.slice/memory.max": f"{1 * GB}\n",
        }
    )
    assert usable_memory(16 * GB, read) == 1 * GB


def test_a_container_sees_its_own_limit_at_the_root() -> None:
    """The path /proc/self/cgroup gives is the host's, absent in the container's view."""
    v2 = files(
        {"/proc/self/cgroup": "0::/../docker-abc\n", "/sys/fs/cgroup/memory.max": "536870912"}
    )
    assert usable_memory(64 * GB, v2) == 512 * MB
    v1 = files(
        {
            "/proc/self/cgroup": "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{768 * MB}\n",
        }
    )
    assert usable_memory(64 * GB, v1) == 768 * MB


def test_v1_limits_and_no_limit() -> None:
    proc = "5:cpu,cpuacct:/\n4:memory:/process_api/6f8a\n1:name=systemd:/\n"
    unlimited = files(
        {
            "/proc/self/cgroup": proc,
            "/sys/fs/cgroup/memory/process_api/6f8a/memory.limit_in_bytes": V1_NO_LIMIT,
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_NO_LIMIT,
        }
    )
    assert usable_memory(4 * GB, unlimited) == 4 * GB
    limited = files(
        {
            "/proc/self/cgroup": proc,
            "/sys/fs/cgroup/memory/process_api/6f8a/memory.limit_in_bytes": f"{300 * MB}\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_NO_LIMIT,
        }
    )
    assert usable_memory(4 * GB, limited) == 300 * MB


def test_the_files_read_own_cgroup_first_then_parents_then_roots() -> None:
    assert limit_files("4:memory:/a/b\n0::/x\n") == [
        "/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/a/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/x/memory.max",
        "/sys/fs/cgroup/memory.max",
    ]
    assert limit_files("garbage\n") == [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]


@pytest.mark.parametrize(
    ("text", "limit"),
    [("max\n", None), ("", None), ("0\n", None), ("-1", None), ("12 MB", None), (None, None),
     ("1_048_576", None), ("+1048576", None), ("\u0661\u0662", None), ("1048576\n", MB)],
)  # fmt: skip
def test_a_limit_file_says_bytes_or_no_limit(text: str | None, limit: int | None) -> None:
    assert parse_limit(text) == limit


def test_a_nameserver_in_a_cgroup_sizes_its_cache_by_the_cgroup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 256 MB container on a 64 GB host: a quarter of 256 MB, not the cache's full
    bound of 128 MiB (before: the host's memory said the full bound)."""
    from retreatkit.nameserver import service
    from retreatkit.nameserver.fakes import FakeTransport, ManualClock

    monkeypatch.setattr(memory, "machine_memory", lambda: 64 * GB)
    given = {"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": f"{256 * MB}\n"}
    monkeypatch.setattr(memory, "read_text", given.get)
    settings = service.Settings(listen=("127.0.0.1", 0), upstreams=[("192.0.2.53", 53)])
    ns = service.Nameserver(settings, clock=ManualClock(), transport=FakeTransport({}))
    assert ns.resolver.cache.max_bytes == 64 * MB


def test_this_machine_says_something_no_bigger_than_itself() -> None:
    machine = memory.machine_memory()
    found = memory.physical_memory()
    assert found is not None and machine is not None and 0 < found <= machine
