"""Just enough ELF64 to read a kernel module's `.modinfo` and a shared object's needs
(the libraries and symbols it asks the loader for, the symbols it gives).

The System V ABI's generic ELF layout (little-endian, 64-bit only: the images are x86_64).
Reading these ourselves, rather than running `ldd` or `modinfo`, keeps the build free of
the host's loader and kmod, and works on files that were never installed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SHT_DYNAMIC = 6
SHT_DYNSYM = 11
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERSYM = 0x6FFFFFFF
VER_FLG_BASE = 1
SHN_UNDEF = 0
STB_GLOBAL, STB_WEAK = 1, 2
STV_DEFAULT = 0
PT_INTERP = 3
PT_NOTE = 4
DT_NEEDED = 1
DT_SONAME = 14


class ElfError(ValueError):
    """The file is not a 64-bit little-endian ELF object we can read."""


@dataclass(frozen=True)
class Section:
    name: str
    kind: int
    offset: int
    size: int
    link: int


class Elf:
    def __init__(self, data: bytes, name: str = "") -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ElfError(f"{name or 'file'} is not a 64-bit little-endian ELF object")
        self.data = data
        self.name = name
        phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
        self.segments = [
            struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize) for i in range(phnum)
        ]
        raw = [struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize) for i in range(shnum)]
        names = raw[shstrndx][4] if raw else 0
        self.sections = [
            Section(self._string(names, name_at), kind, offset, size, link)
            for name_at, kind, _flags, _addr, offset, size, link, _info in raw
        ]

    @classmethod
    def read(cls, path: Path) -> Elf:
        return cls(path.read_bytes(), str(path))

    def _string(self, table_offset: int, at: int) -> str:
        start = table_offset + at
        return self.data[start : self.data.index(b"\0", start)].decode("utf-8", "replace")

    def section(self, name: str) -> bytes | None:
        for s in self.sections:
            if s.name == name:
                return self.data[s.offset : s.offset + s.size]
        return None

    def interpreter(self) -> str | None:
        """The program loader a dynamically linked executable names (PT_INTERP)."""
        for kind, _flags, offset, _vaddr, _paddr, filesz in self.segments:
            if kind == PT_INTERP:
                return self.data[offset : offset + filesz].rstrip(b"\0").decode()
        return None

    def notes(self) -> list[tuple[str, int, bytes]]:
        """(owner, type, description) of each note in the PT_NOTE segments."""
        found: list[tuple[str, int, bytes]] = []
        for kind, _flags, offset, _vaddr, _paddr, filesz in self.segments:
            if kind != PT_NOTE:
                continue
            at, end = offset, offset + filesz
            while at + 12 <= end:
                namesz, descsz, note_type = struct.unpack_from("<III", self.data, at)
                name_at = at + 12
                desc_at = name_at + (namesz + 3) // 4 * 4
                name = self.data[name_at : name_at + namesz].rstrip(b"\0")
                found.append((name.decode("ascii", "replace"), note_type,
                              self.data[desc_at : desc_at + descsz]))  # fmt: skip
                at = desc_at + (descsz + 3) // 4 * 4
        return found

    def _dynamic(self, tag: int) -> list[str]:
        found: list[str] = []
        for s in self.sections:
            if s.kind != SHT_DYNAMIC:
                continue
            strings = self.sections[s.link].offset
            for at in range(s.offset, s.offset + s.size, 16):
                d_tag, d_val = struct.unpack_from("<qQ", self.data, at)
                if d_tag == 0:
                    break
                if d_tag == tag:
                    found.append(self._string(strings, d_val))
        return found

    def needed(self) -> list[str]:
        """The shared libraries the dynamic loader must find (DT_NEEDED), in order."""
        return self._dynamic(DT_NEEDED)

    def soname(self) -> str | None:
        names = self._dynamic(DT_SONAME)
        return names[0] if names else None

    def dynamic_symbols(self) -> tuple[set[str], set[str]]:
        """(defined, undefined): the names in the dynamic symbol table that the object
        gives other objects (global or weak, default visibility), and those it asks the
        loader to find elsewhere."""
        defined: set[str] = set()
        undefined: set[str] = set()
        for s in self.sections:
            if s.kind != SHT_DYNSYM:
                continue
            strings = self.sections[s.link].offset
            for at in range(s.offset + 24, s.offset + s.size, 24):  # entry 0 is null
                name_at, info, other, shndx = struct.unpack_from("<IBBH", self.data, at)
                name = self._string(strings, name_at)
                if not name or info >> 4 not in (STB_GLOBAL, STB_WEAK):
                    continue
                if shndx == SHN_UNDEF:
                    undefined.add(name)
                elif other & 3 == STV_DEFAULT:
                    defined.add(name)
        return defined, undefined

    def version_nodes(self) -> list[tuple[str, str | None]]:
        """The symbol versions the object defines (.gnu.version_d), in order, each with the
        version it follows ("OPENSSL_3.0.3" follows "OPENSSL_3.0.0"); the entry naming the
        object itself is left out."""
        return [(name, parent) for _index, name, parent in self._verdefs()]

    def _verdefs(self) -> list[tuple[int, str, str | None]]:
        try:
            return self._read_verdefs()
        except (struct.error, IndexError, ValueError) as exc:
            raise ElfError(f"{self.name or 'file'}: unreadable symbol versions ({exc})") from None

    def _read_verdefs(self) -> list[tuple[int, str, str | None]]:
        found: list[tuple[int, str, str | None]] = []
        for s in self.sections:
            if s.kind != SHT_GNU_VERDEF:
                continue
            strings = self.sections[s.link].offset
            at = s.offset
            while True:
                _ver, flags, index, count, _hash, aux, following = struct.unpack_from(
                    "<HHHHIII", self.data, at
                )
                names = []
                name_at = at + aux
                for _ in range(count):
                    vda_name, vda_next = struct.unpack_from("<II", self.data, name_at)
                    names.append(self._string(strings, vda_name))
                    name_at += vda_next
                if not flags & VER_FLG_BASE and names:
                    found.append((index, names[0], names[1] if len(names) > 1 else None))
                if not following:
                    break
                at += following
        return found

    def symbol_versions(self) -> dict[str, str]:
        """Each symbol the object gives (as `dynamic_symbols`) and the version it gives it
        under; a symbol given unversioned, or under a hidden version, is left out."""
        names = {index: name for index, name, _parent in self._verdefs()}
        try:
            return self._read_symbol_versions(names)
        except (struct.error, IndexError, ValueError) as exc:
            raise ElfError(f"{self.name or 'file'}: unreadable symbol versions ({exc})") from None

    def _read_symbol_versions(self, names: dict[int, str]) -> dict[str, str]:
        versym = next((s for s in self.sections if s.kind == SHT_GNU_VERSYM), None)
        found: dict[str, str] = {}
        for s in self.sections:
            if s.kind != SHT_DYNSYM or versym is None:
                continue
            strings = self.sections[s.link].offset
            for number in range(1, s.size // 24):
                name_at, info, other, shndx = struct.unpack_from(
                    "<IBBH", self.data, s.offset + number * 24
                )
                (index,) = struct.unpack_from("<H", self.data, versym.offset + number * 2)
                version = names.get(index & 0x7FFF)  # the top bit marks a hidden version
                if (
                    version is not None and shndx != SHN_UNDEF and other & 3 == STV_DEFAULT
                    and info >> 4 in (STB_GLOBAL, STB_WEAK) and not index & 0x8000
                ):  # fmt: skip
                    found[self._string(strings, name_at)] = version
        # each version is also a symbol of its own name, which no other object asks for
        return {symbol: v for symbol, v in found.items() if symbol not in names.values()}

    def modinfo(self) -> list[tuple[str, str]]:
        """A kernel module's `key=value` strings (alias, depends, softdep, ...)."""
        raw = self.section(".modinfo") or b""
        pairs: list[tuple[str, str]] = []
        for item in raw.split(b"\0"):
            key, sep, value = item.decode("utf-8", "replace").partition("=")
            if sep:
                pairs.append((key, value))
        return pairs


def archive_symbols(data: bytes) -> set[str]:
    """The symbols a static archive's index (its first member: "/", or "/SYM64/" with
    64-bit offsets) says its members define; an archive without one gives none."""
    if not data.startswith(b"!<arch>\n") or len(data) < 68:
        return set()
    name = data[8:24].rstrip(b" ")
    if name not in (b"/", b"/SYM64/"):
        return set()
    width = 8 if name == b"/SYM64/" else 4
    size = data[56:66].strip()
    if not size.isdigit():
        raise ElfError("unreadable archive index (its size is not a number)")
    index = data[68 : 68 + int(size)]
    count = int.from_bytes(index[:width], "big")
    names = index[width + width * count :].split(b"\0")
    if len(index) < width or len(names) < count:
        raise ElfError("unreadable archive index (cut short)")
    return {n.decode("utf-8", "replace") for n in names[:count]}
