"""The guest's zip importer: each module read once, and imported as zipimport imports it.

In a fresh interpreter, as the guest's /init runs: a zip like the image's (a module, a
package, a subpackage, deflated), imported with zipimport's own importer and then with
ours; every member read from the zip is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retreatkit.image import payload

GUEST = """
import json, sys, zipimport
counted = []
read = zipimport._get_data
def counting(archive, toc_entry):
    counted.append(toc_entry[0].rsplit("/", 1)[-1])
    return read(archive, toc_entry)
zipimport._get_data = counting
if sys.argv[2] == "ours":
    from retreatkit.image import zipimports
    assert zipimports.install()
sys.path.insert(0, sys.argv[1])
import flat, pkg.sub.leaf
print(json.dumps({
    "reads": sorted(counted),
    "answers": [flat.ANSWER, pkg.sub.leaf.ANSWER],
    "files": [m.__file__ for m in (flat, pkg, pkg.sub.leaf)],
    "paths": [pkg.__path__, pkg.sub.__path__],
    "importer": type(flat.__loader__).__name__,
}))
"""


def _import(zipped: Path, importer: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-I", "-c", GUEST, str(zipped), importer],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen: dict[str, object] = json.loads(done.stdout)
    return seen


@pytest.fixture
def zipped(tmp_path: Path) -> Path:
    sources = {
        "flat.py": "ANSWER = 42\n",
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "from pkg import sub\nANSWER = sub.__name__\n",
    }
    members = {}
    for name, text in sources.items():
        code = compile(text, f"/guest/{name}", "exec")
        members[name + "c"] = _pyc(code)
    path = tmp_path / "python311.zip"
    path.write_bytes(payload.zipped(members, deflate=True))
    return path


def _pyc(code: object) -> bytes:
    import importlib._bootstrap_external as external

    data: bytes = external._code_to_hash_pyc(code, b"\0" * 8, checked=False)  # type: ignore[attr-defined]
    return data


def test_each_member_is_read_once(zipped: Path) -> None:
    stock, ours = _import(zipped, "stock"), _import(zipped, "ours")
    members = ["__init__.pyc", "__init__.pyc", "flat.pyc", "leaf.pyc"]
    assert ours["reads"] == members
    assert stock["reads"] == sorted(members * 2)  # what 3.11's zipimport does: twice
    assert ours["importer"] == "ZipImporter"
    for key in ("answers", "files", "paths"):
        assert ours[key] == stock[key]
    assert ours["answers"] == [42, "pkg.sub"]
    assert ours["files"] == [
        f"{zipped}/flat.pyc", f"{zipped}/pkg/__init__.pyc", f"{zipped}/pkg/sub/leaf.pyc"
    ]  # fmt: skip


def test_a_missing_module_is_missing_either_way(zipped: Path) -> None:
    probe = (
        "import sys; from retreatkit.image import zipimports; zipimports.install();"
        "sys.path.insert(0, sys.argv[1])\n"
        "try:\n    import nowhere\nexcept ModuleNotFoundError as exc:\n    print(exc.name)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(zipped)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "nowhere"
