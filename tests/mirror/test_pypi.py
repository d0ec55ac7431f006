"""PyPI pages as typed records: parsed, rewritten, rendered, filtered for offline (pure)."""

from __future__ import annotations

import json

import pytest

from retreatkit.mirror import pypi
from retreatkit.mirror.pypi import File, Project

A, B, M = "a" * 64, "b" * 64, "c" * 64

HTML = f"""<!DOCTYPE html><html><body>
<a href="../../files/demo-1.0-py3-none-any.whl#sha256={A}" data-requires-python="&gt;=3.8"
   data-dist-info-metadata="sha256={M}">demo-1.0-py3-none-any.whl</a>
<a href="../../files/demo-2.0.tar.gz#sha256={B}" data-yanked="broken">demo-2.0.tar.gz</a>
<a href="../../files/demo-3.0.tar.gz#md5={"d" * 32}">demo-3.0.tar.gz</a>
</body></html>""".encode()


def test_html_upstream_becomes_typed_records() -> None:
    files = pypi.parse(HTML, "text/html", "http://up.test/simple/demo/")
    assert files[0] == File(
        filename="demo-1.0-py3-none-any.whl",
        url="http://up.test/files/demo-1.0-py3-none-any.whl",
        hashes={"sha256": A},
        requires_python=">=3.8",
        core_metadata={"sha256": M},
    )
    assert files[1].yanked == "broken" and files[1].size is None


def test_rewrite_keeps_only_what_can_be_verified() -> None:
    project, sources = pypi.rewrite("demo", pypi.parse(HTML, "text/html", "http://up.test/s/"))
    assert [f.filename for f in project.files] == ["demo-1.0-py3-none-any.whl", "demo-2.0.tar.gz"]
    assert project.files[0].url == f"/pypi/files/{A}/demo-1.0-py3-none-any.whl"
    assert [(s.name, s.url) for s in sources] == [
        (f"pypi/{A}/demo-1.0-py3-none-any.whl", "http://up.test/files/demo-1.0-py3-none-any.whl"),
        (
            f"pypi/{A}/demo-1.0-py3-none-any.whl.metadata",
            "http://up.test/files/demo-1.0-py3-none-any.whl.metadata",
        ),
        (f"pypi/{B}/demo-2.0.tar.gz", "http://up.test/files/demo-2.0.tar.gz"),
    ]
    assert {s.package for s in sources} == {"demo"}


def test_pep_700_versions_and_an_honest_api_version() -> None:
    html_project, _ = pypi.rewrite("demo", pypi.parse(HTML, "text/html", "http://up.test/s/"))
    doc = json.loads(pypi.render_json(html_project))
    # an HTML upstream gives no sizes: the page cannot claim 1.1, which requires them
    assert doc["meta"] == {"api-version": "1.0"}
    assert doc["versions"] == ["1.0", "2.0"]
    assert "size" not in doc["files"][0]
    sized = html_project.with_sizes({html_project.files[0].key: 123, html_project.files[1].key: 9})
    doc = json.loads(pypi.render_json(sized))
    assert doc["meta"] == {"api-version": "1.1"}
    assert [f["size"] for f in doc["files"]] == [123, 9]
    assert doc["files"][0]["core-metadata"] == {"sha256": M}
    assert "dist-info-metadata" not in doc["files"][0]  # PEP 714: the new name only in JSON
    assert doc["files"][1]["yanked"] == "broken"


def test_json_upstream_sizes_survive_the_round_trip() -> None:
    upstream = {
        "meta": {"api-version": "1.1"},
        "name": "demo",
        "files": [
            {"filename": "demo-1.0-py3-none-any.whl", "url": "https://f.test/demo-1.0-py3-none-any.whl",
             "hashes": {"sha256": A}, "size": 4321, "upload-time": "2024-01-01T00:00:00Z",
             "core-metadata": {"sha256": M}},
        ],
    }  # fmt: skip
    processed = pypi.process("demo", json.dumps(upstream).encode(), pypi.JSON_TYPE, "https://u/")
    doc = json.loads(processed.body)
    assert doc["meta"]["api-version"] == "1.1"
    assert doc["files"][0]["size"] == 4321
    assert doc["files"][0]["upload-time"] == "2024-01-01T00:00:00Z"
    assert pypi.load(processed.body).files[0].size == 4321


def test_the_offline_page_lists_only_what_is_held() -> None:
    project, _ = pypi.rewrite("demo", pypi.parse(HTML, "text/html", "http://up.test/s/"))
    wheel, sdist = project.files
    offline = project.only({sdist.key: 77})
    assert [f.filename for f in offline.files] == ["demo-2.0.tar.gz"]
    assert offline.files[0].size == 77
    # a wheel whose metadata is not held is listed without it: pip reads the wheel instead
    held = project.only({wheel.key: 5})
    assert held.files[0].core_metadata is None
    assert b"data-core-metadata" not in pypi.render_html(held)


def test_html_rendering_offers_both_metadata_names() -> None:
    project, _ = pypi.rewrite("demo", pypi.parse(HTML, "text/html", "http://up.test/s/"))
    page = pypi.render_html(project).decode()
    assert f'data-core-metadata="sha256={M}" data-dist-info-metadata="sha256={M}"' in page
    assert 'data-yanked="broken"' in page
    assert 'data-requires-python="&gt;=3.8"' in page


@pytest.mark.parametrize(
    ("project", "filename", "version"),
    [
        ("numpy", "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "2.1.0"),
        ("python-dateutil", "python-dateutil-2.8.2.tar.gz", "2.8.2"),
        ("python-dateutil", "python_dateutil-2.9.0.post0.tar.gz", "2.9.0.post0"),
        ("zope-interface", "zope.interface-6.0.zip", "6.0"),
        ("demo", "demo-1.0-py3.11.egg", "1.0"),
        ("demo", "demo-1.0.exe", None),
    ],
)
def test_version_of(project: str, filename: str, version: str | None) -> None:
    assert pypi.version_of(project, filename) == version


def test_a_broken_upstream_page_is_refused() -> None:
    # a page cut short is the fetch's to see (tests/mirror/test_bad_upstream.py)
    with pytest.raises(pypi.PageError):
        pypi.parse(b"\xff\xfe not utf-8", "text/html", "http://up.test/")


def test_versions_are_unique_in_order() -> None:
    files = tuple(
        File(f"demo-{v}-py3-none-any.whl", "/x", {"sha256": A}) for v in ("1.0", "2.0", "1.0")
    )
    assert Project("demo", files).versions == ["1.0", "2.0"]


def test_a_login_portals_page_is_not_a_project_page() -> None:
    """With the uplink cut, a venue's portal answers every URL with its login page: taken
    as the project's page, it would list no files and replace the page the mirror holds."""
    login = b"<html><head><title>Wi-Fi</title></head><body><form>Log in</form></body></html>"
    with pytest.raises(pypi.PageError) as exc:
        pypi.process("demo-pkg", login, "text/html", "http://up.example/simple/demo-pkg/")
    assert str(exc.value) == "upstream sent a page that is not demo-pkg's (a login portal's?)"
    empty = b"<html><body><h1>Links for Demo_Pkg</h1></body></html>"  # a project with no files
    kept = pypi.process("demo-pkg", empty, "text/html", "http://up.example/simple/demo-pkg/")
    assert kept.sources == ()
