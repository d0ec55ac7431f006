"""The guest's zip importer, reading each module once.

Python 3.11's zipimport finds a module by building its spec, which asks the importer for
the module's file name; `zipimporter.get_filename` works that out by loading the module's
code (reading the member, inflating it, unmarshalling it) and throws the code away, so
every module from the zip is read and unmarshalled twice. In a mirror guest under
emulation that is a fifth of the interpreter's start, and the garbage it leaves costs
0.5 MB of memory. The importer here names the file from the zip's directory alone, as
`get_code` would find it; loading is zipimport's own.

`install()` runs first in the guest's /init, before anything but the interpreter's own
start-up modules is imported. It relies on zipimport's private helpers, so on a Python
without them it leaves zipimport as it is.
"""

from __future__ import annotations

import sys
import zipimport


class ZipImporter(zipimport.zipimporter):
    """zipimport's importer, without loading a module to learn its file name."""

    def get_filename(self, fullname: str) -> str:
        path = zipimport._get_module_path(self, fullname)  # type: ignore[attr-defined]
        members: dict[str, tuple[object, ...]] = self._files  # type: ignore[attr-defined]
        for suffix, _, _ in zipimport._zip_searchorder:  # type: ignore[attr-defined]
            found = members.get(path + suffix)
            if found is not None:
                return str(found[0])  # the archive's path, then the member's
        raise zipimport.ZipImportError(f"can't find module {fullname!r}", name=fullname)


def install() -> bool:
    """Put ZipImporter in zipimport's place for the zips on sys.path; False if this
    Python's zipimport lacks what it relies on."""
    needed = ("_get_module_path", "_zip_searchorder")
    if not all(hasattr(zipimport, n) for n in needed):
        return False
    if zipimport.zipimporter not in sys.path_hooks:
        return False
    sys.path_hooks[sys.path_hooks.index(zipimport.zipimporter)] = ZipImporter
    for entry, finder in list(sys.path_importer_cache.items()):
        if type(finder) is zipimport.zipimporter:
            del sys.path_importer_cache[entry]  # made again, by ZipImporter, when next asked
    return True
