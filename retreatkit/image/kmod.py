"""Which modules of a Debian kernel a guest must load, and in what order: computed.

The guest's devices announce themselves by modalias (`pci:v00001AF4d00001000...`,
`virtio:d00000001v...`) and a filesystem by `fs-<type>`; every module lists the aliases
it serves, its `depends=` and its `softdep=pre:` in its ELF `.modinfo` section, and
built-in drivers in `modules.builtin.modinfo`. That is what modprobe reads; the .deb ships
no `modules.dep`, so the index is made here, once per kernel, and kept beside it.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from retreatkit.image.elf import Elf


class ModuleError(RuntimeError):
    """The kernel lacks a driver the guest needs."""


@dataclass(frozen=True)
class Module:
    name: str
    path: str  # relative to the modules folder
    depends: tuple[str, ...]
    pre: tuple[str, ...]  # softdep pre: names or aliases to load first, if present
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Index:
    modules: dict[str, Module]
    builtin_aliases: tuple[str, ...]

    def provider(self, wanted: str) -> Module | bool | None:
        """The module serving a name or modalias; True if built in; None if nothing does."""
        key = wanted.replace("-", "_")
        if key in self.modules:
            return self.modules[key]
        if any(fnmatch.fnmatchcase(wanted, a) for a in self.builtin_aliases):
            return True
        for module in self.modules.values():
            if any(fnmatch.fnmatchcase(wanted, a) for a in module.aliases):
                return module
        return None

    def load_order(self, wanted: list[str]) -> list[Module]:
        """Modules to load, dependencies first, for every wanted modalias; built-ins skipped."""
        order: list[Module] = []
        done: set[str] = set()

        def visit(module: Module, trail: tuple[str, ...]) -> None:
            if module.name in done or module.name in trail:
                return
            for dep in module.pre:
                found = self.provider(dep)
                if isinstance(found, Module):
                    visit(found, (*trail, module.name))
            for dep in module.depends:
                if dep not in self.modules:
                    raise ModuleError(f"{module.name} needs {dep}, which the kernel lacks")
                visit(self.modules[dep], (*trail, module.name))
            done.add(module.name)
            order.append(module)

        for alias in wanted:
            found = self.provider(alias)
            if found is None:
                raise ModuleError(f"the kernel has no driver for {alias}")
            if isinstance(found, Module):
                visit(found, ())
        return order


def _module(path: Path, rel: str) -> Module:
    info = Elf.read(path).modinfo()
    values: dict[str, list[str]] = {}
    for key, value in info:
        values.setdefault(key, []).append(value)
    name = (values.get("name") or [path.stem])[0].replace("-", "_")
    depends = tuple(d for v in values.get("depends", []) for d in v.split(",") if d)
    pre: list[str] = []
    for soft in values.get("softdep", []):
        # "pre: a b post: c"
        words = soft.split()
        mode = ""
        for word in words:
            if word.endswith(":"):
                mode = word[:-1]
            elif mode == "pre":
                pre.append(word)
    return Module(name, rel, depends, tuple(pre), tuple(values.get("alias", [])))


def index(modules_dir: Path) -> Index:
    """The kernel's module index, read from the .ko files once and cached beside them."""
    cached = modules_dir / ".retreatkit-index.json"
    if cached.exists():
        doc = json.loads(cached.read_text())
        mods = {
            m["name"]: Module(
                m["name"], m["path"], tuple(m["depends"]), tuple(m["pre"]), tuple(m["aliases"])
            )
            for m in doc["modules"]
        }
        return Index(mods, tuple(doc["builtin_aliases"]))
    mods = {}
    for path in sorted(modules_dir.rglob("*.ko")):
        module = _module(path, str(path.relative_to(modules_dir)))
        mods[module.name] = module
    builtin: list[str] = []
    builtin_info = modules_dir / "modules.builtin.modinfo"
    if builtin_info.exists():
        for item in builtin_info.read_bytes().split(b"\0"):
            key, _, value = item.decode("utf-8", "replace").partition("=")
            if key.endswith(".alias"):
                builtin.append(value)
    doc = {"modules": [vars(m) for m in mods.values()], "builtin_aliases": builtin}
    cached.write_text(json.dumps(doc, sort_keys=True))
    return Index(mods, tuple(builtin))
