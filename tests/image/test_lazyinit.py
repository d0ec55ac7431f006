"""A package's __init__ made lazy for a guest (image/lazyinit.py): aiohttp's real one, made
so, serves without loading its client and still gives every name it offered; what cannot
wait is refused in words."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from retreatkit.image.lazyinit import NotLazy, lazy_init

USE = """
import json, sys
import aiohttp, aiohttp.web
before = "aiohttp.client" in sys.modules
missing = [n for n in aiohttp.__all__ if not hasattr(aiohttp, n)]
print(json.dumps({
    "client before a name is read": before,
    "version": aiohttp.__version__,
    "ClientSession": aiohttp.ClientSession.__module__,
    "client after": "aiohttp.client" in sys.modules,
    "hdrs": aiohttp.hdrs.HOST,
    "missing": missing,
    "dir has ClientSession": "ClientSession" in dir(aiohttp),
}))
"""


def test_aiohttp_made_lazy_serves_without_its_client_and_gives_every_name(
    tmp_path: Path,
) -> None:
    real = Path(aiohttp.__file__).parent
    copy = tmp_path / "aiohttp"
    shutil.copytree(real, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "__init__.py").write_text(lazy_init("aiohttp", (real / "__init__.py").read_text()))
    done = subprocess.run([sys.executable, "-c", USE], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    assert json.loads(done.stdout) == {
        "client before a name is read": False,
        "version": aiohttp.__version__,
        "ClientSession": "aiohttp.client",
        "client after": True,
        "hdrs": "Host",
        # its own lazy hook for gunicorn's workers is left out: no guest runs gunicorn
        "missing": ["GunicornUVLoopWebWorker", "GunicornWebWorker"],
        "dir has ClientSession": True,
    }


@pytest.mark.parametrize(
    ("source", "refused"),
    [
        ("from .a import b\nsetup()\n", "line 2: 'setup()' cannot wait until a name is read"),
        ("from .a import *\n", "line 1: import *"),
        ("x = 1\n", "line 1: 'x = 1' cannot wait until a name is read"),
    ],
)
def test_what_cannot_wait_is_refused_in_words(source: str, refused: str) -> None:
    with pytest.raises(NotLazy, match="^" + re.escape(f"pkg/__init__.py {refused}") + "$"):
        lazy_init("pkg", source)


def test_a_name_not_offered_is_an_attribute_error(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("b = 'from a'\n")
    (package / "__init__.py").write_text(lazy_init("pkg", '"""doc"""\nfrom .a import b as c\n'))
    check = "import pkg; print(pkg.c); print(hasattr(pkg, 'nothing'))"
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    assert done.stdout.split() == ["from", "a", "False"]
