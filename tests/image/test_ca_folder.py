"""The mirror image's CA certificates: a hashed folder OpenSSL finds an issuer in.

A real TLS handshake between two OpenSSL contexts over a socket pair: the client trusts
only a folder written the way the image writes `/usr/lib/ssl/certs`, and must find the
test CA in it by its subject hash among certificates that have nothing to do with it.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from retreatkit.image import build, tlstesting

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed (.ci/run installs it)"
)
HOST = "mirror.retreat.test"


def _handshake(
    tmp_path: Path, ca: tuple[bytes, ec.EllipticCurvePrivateKey], trusted: dict[str, bytes]
) -> str:
    """Serve a certificate `ca` signed; connect trusting only the folder `trusted`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tlstesting.server_chain(ca, (), tmp_path / "leaf.pem", (HOST,)))
    folder = tmp_path / "certs"
    folder.mkdir()
    for name, data in trusted.items():
        (folder / name).write_bytes(data)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(capath=str(folder))
    a, b = socket.socketpair()
    served = threading.Thread(target=_serve, args=(server_ctx, a), daemon=True)
    served.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=HOST) as tls:
            tls.sendall(b"ping")
            return tls.recv(4).decode()
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    finally:
        served.join(timeout=30)


def _serve(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True) as tls:
            tls.sendall(tls.recv(4))
    except (ssl.SSLError, OSError):
        pass  # the client refused the certificate


def test_openssl_finds_the_issuer_by_its_subject_hash(tmp_path: Path) -> None:
    ca = tlstesting.make_ca("Retreat Test CA")
    others = [tlstesting.make_ca(f"Unrelated CA {n}")[0] for n in range(3)]
    folder = build.hashed_folder([*others, ca[0]])
    assert len(folder) == 4 and all(n.endswith(".0") and len(n) == 10 for n in folder)
    assert _handshake(tmp_path, ca, folder) == "ping"


def test_the_name_is_what_openssl_looks_up(tmp_path: Path) -> None:
    ca = tlstesting.make_ca("Retreat Test CA")
    # the same certificate under a name that is not its subject hash is never read
    assert _handshake(tmp_path, ca, {"retreat-test-ca.0": ca[0]}) == (
        "unable to get local issuer certificate"
    )
