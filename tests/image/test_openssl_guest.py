"""Our OpenSSL, linked again from Debian's static archives, under the guest's own interpreter:
its loader, its libc, its `_ssl` and `_hashlib`, and the libraries an image would ship
beside them (no qemu: the same programs run here). TLS 1.2 and 1.3 handshakes with a
server here, a certificate checked against a CA and one refused, and OpenSSL's digests."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from retreatkit.image import debs, openssllib, sysroot, testing, tlstesting
from retreatkit.image.elf import Elf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("gcc", "ld")),
        reason="relinking OpenSSL needs gcc (.ci/run installs it)",
    ),
]

CLIENT = """
import hashlib, json, socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
seen = {}
for name, version in (("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3)):
    context = ssl.create_default_context(cafile=ca)
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw, server_hostname="mirror.test") as tls:
            tls.sendall(b"hello")
            seen[name] = [tls.version(), tls.recv(5).decode()]
try:
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port)) as raw:
        context.wrap_socket(raw, server_hostname="elsewhere.test")
    seen["wrong name"] = "accepted"
except ssl.SSLCertVerificationError as exc:
    seen["wrong name"] = exc.verify_message
digests = {n: hashlib.new(n, b"retreat").hexdigest()[:16] for n in ("sha256", "sha3_256", "sha512")}
maps = open("/proc/self/maps").read().splitlines()
print(json.dumps({
    "seen": seen,
    "digests": digests,
    "pbkdf2": hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 1000).hex()[:16],
    "version": ssl.OPENSSL_VERSION,
    "loaded": sorted({line.split()[-1] for line in maps if "/lib" in line and ".so.3" in line}),
}))
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server here (the host's OpenSSL) for mirror.test, echoing five bytes per
    connection; (its port, the CA file that issued its certificate)."""
    ca = tlstesting.make_ca("Retreat Test CA")
    chain = tlstesting.server_chain(ca, ("127.0.0.1",), tmp_path / "chain.pem", ("mirror.test",))
    (tmp_path / "ca.pem").write_bytes(ca[0])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(tls.recv(5))
                except (ssl.SSLError, OSError):
                    continue  # the client refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], tmp_path / "ca.pem"
    finally:
        stop.set()
        listener.close()
        thread.join(10)


def _relinked(
    interp: sysroot.Interpreter,
) -> tuple[openssllib.OpenSSL, list[Path], dict[str, tuple[Path, debs.Package]], dict[str, Path]]:
    """Ours for the interpreter's `_ssl` and `_hashlib`, as an image build chooses it; the
    modules; the libraries the guest would load, by soname; Debian's two libraries."""
    modules = [
        next((interp.stdlib / "lib-dynload").glob(f"{name}.*.so")) for name in ("_ssl", "_hashlib")
    ]
    chosen: list[openssllib.OpenSSL] = []
    debian: dict[str, Path] = {}

    def given(soname: str, path: Path, package: debs.Package) -> Path:
        if soname not in openssllib.SONAMES:
            return path
        if not chosen:
            debian.update({s: path.with_name(s) for s in openssllib.SONAMES})
            chosen.append(openssllib.choose(package, debian, modules))
        return chosen[0].paths[soname]

    libraries = sysroot.Libraries(interp.packages).resolve([interp.binary, *modules], given)
    return chosen[0], modules, libraries, debian


def test_the_guests_interpreter_speaks_tls_on_our_openssl(
    tmp_path: Path, server: tuple[int, Path]
) -> None:
    interp = sysroot.interpreter()
    ours, modules, libraries, debian = _relinked(interp)
    assert ours.kind == "relinked", ours.label
    for soname in openssllib.SONAMES:
        lib = Elf.read(ours.paths[soname])
        assert libraries[soname][0] == ours.paths[soname]
        theirs = Elf.read(debian[soname])
        assert theirs.symbol_versions()  # Debian's, not ours: it gives thousands
        # nothing in a guest unwinds: no unwind tables
        assert {s.name for s in lib.sections} & {".eh_frame", ".eh_frame_hdr"} == set()
        # what the modules ask for, under the versions Debian's library gives it
        asked = openssllib.wanted(modules, soname, theirs.dynamic_symbols()[0])
        assert asked
        versions = lib.symbol_versions()
        assert {s: versions.get(s) for s in asked} == {
            s: theirs.symbol_versions()[s] for s in asked
        }
        assert lib.version_nodes() == theirs.version_nodes()
        assert len(lib.symbol_versions()) < len(theirs.symbol_versions()) / 5
    # libssl gives what the modules ask, and nothing else
    ssl_gives = set(Elf.read(ours.paths[openssllib.SSL]).symbol_versions())
    assert ssl_gives == openssllib.wanted(modules, openssllib.SSL, ssl_gives | {"SSL_new"})
    assert Elf.read(ours.paths[openssllib.SSL]).needed() == [openssllib.CRYPTO, "libc.so.6"]
    # the libraries an image ships, in a folder of their own, and nothing else
    folder = tmp_path / "lib"
    run = testing.guest_libraries(libraries, interp.binary, folder)
    port, ca = server
    done = subprocess.run(
        [*run, "-I", "-S", "-c", CLIENT, str(port), str(ca)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loaded"] == [str(folder / openssllib.CRYPTO), str(folder / openssllib.SSL)]
    assert report["seen"] == {
        "1.2": ["TLSv1.2", "hello"],
        "1.3": ["TLSv1.3", "hello"],
        "wrong name": "Hostname mismatch, certificate is not valid for 'elsewhere.test'.",
    }
    assert report["digests"] == {
        "sha256": "1a076332aa18967d", "sha3_256": "a7c5e8325bfdec56", "sha512": "12f609073ecc2ced",
    }  # fmt: skip
    assert report["pbkdf2"] == "0a38253555ce37f5"
    assert report["version"].startswith("OpenSSL " + ours.label.split()[3].split("-")[0])


def test_the_same_archives_give_the_same_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked again in a cache of its own: the same bytes."""
    interp = sysroot.interpreter()
    first = _relinked(interp)[0]
    packages = debs.debs_dir()  # the packages only, shared: nothing is linked from them
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    debs.debs_dir().parent.mkdir(parents=True)
    debs.debs_dir().symlink_to(packages)
    again = _relinked(interp)[0]
    assert again.kind == "relinked"
    for soname in openssllib.SONAMES:
        assert again.paths[soname].is_relative_to(tmp_path)
        assert again.paths[soname].read_bytes() == first.paths[soname].read_bytes()
