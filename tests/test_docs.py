"""The configuration the operations guide shows must load as written."""

from __future__ import annotations

import re
from pathlib import Path

from retreatkit import config
from retreatkit.nameserver.hosted import nameserver_settings

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_the_guides_retreat_toml_loads(tmp_path: Path) -> None:
    match = re.search(r"```toml\n(.*?)```", GUIDE.read_text(), re.S)
    assert match is not None
    path = tmp_path / "retreat.toml"
    path.write_text(match[1])
    cfg = config.load(path)
    settings = nameserver_settings(cfg["nameserver"], {})
    assert settings.listen == ("0.0.0.0", 53)
    assert sorted((r.name, r.rtype) for r in settings.records) == [
        ("pad.retreat.lan", "A"), ("pad.retreat.lan", "AAAA"),
        ("printer.retreat.lan", "A"), ("wiki.retreat.lan", "A"),
    ]  # fmt: skip
