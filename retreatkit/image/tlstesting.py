"""Test tools for TLS: a test CA, an HTTPS front for a test upstream, a guest that trusts it.

A guest trusts only the CA certificates its image carries (Debian's). A test gives it one
more without building another image: the kernel unpacks the initramfs as a series of cpio
archives (Documentation/driver-api/early-userspace/buffer-format.rst), so an uncompressed
archive after the image's own adds the test CA to the guest's CA folder, under the name
OpenSSL looks it up by.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import json
import shutil
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from retreatkit.image import build, cpio

Issuer = tuple[str, ec.EllipticCurvePrivateKey]


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issuer,
    names: tuple[str, ...] = (),
    addresses: tuple[str, ...] = (),
) -> x509.Certificate:
    """A day's certificate for `subject`: a CA when it issues itself, else for `names`
    and `addresses`."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if subject == issuer[0]:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), False)
    return builder.sign(issuer[1], hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name: str) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A self-issued CA: its certificate (PEM) and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    return pem(certificate(name, key, (name, key))), key


def server_chain(
    ca: tuple[bytes, ec.EllipticCurvePrivateKey],
    addresses: tuple[str, ...],
    into: Path,
    names: tuple[str, ...] = (),
) -> Path:
    """A certificate for `addresses` and `names` issued by `ca`, with its key, in one PEM
    file."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.load_pem_x509_certificate(ca[0]).subject.rfc4514_string()[3:]
    leaf = certificate(names[0] if names else "upstream", key, (issuer, ca[1]), names, addresses)
    into.write_bytes(
        pem(leaf)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return into


def trusting(image: Path, ca_pem: bytes, out: Path) -> Path:
    """A copy of the image folder `image` whose guest also trusts `ca_pem`."""
    out.mkdir(parents=True)
    shutil.copyfile(image / "kernel", out / "kernel")
    extra = {f"{build.CA_DIR}/{n}": cpio.file(d) for n, d in build.hashed_folder([ca_pem]).items()}
    initramfs = (image / "initramfs").read_bytes()
    padding = b"\0" * (-len(initramfs) % 4)  # each archive starts 4-byte aligned
    initramfs += padding + cpio.archive(extra)
    (out / "initramfs").write_bytes(initramfs)
    # the manifest names the initramfs it describes: `image run` refuses one cut short
    manifest = json.loads((image / build.MANIFEST).read_text())
    grown = len(initramfs) - manifest["initramfs"]["size_bytes"]
    manifest["initramfs"] = {"sha256": hashlib.sha256(initramfs).hexdigest(),
                             "size_bytes": len(initramfs)}  # fmt: skip
    manifest["size_bytes"] += grown
    (out / build.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


class TlsFront:
    """HTTPS on 127.0.0.1 in front of a plain HTTP server: each connection, its TLS done,
    is piped to `upstream` (host, port). Runs its own loop in a thread."""

    def __init__(self, chain: Path, upstream: tuple[str, int]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(chain)
        self.upstream = upstream
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tls-front", daemon=True)

    def start(self) -> TlsFront:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the TLS front did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._pipe, "127.0.0.1", 0, ssl=self.context)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        writer.close()
