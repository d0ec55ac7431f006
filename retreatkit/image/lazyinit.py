"""A package's `__init__` that imports each name it offers only when the name is first read
(PEP 562), for a guest whose service needs a small part of a package whose `__init__`
imports all of it: aiohttp's imports its HTTP client (sessions, connectors, cookie jars,
tracing), which the mirror's guest needs only once it fetches from an upstream, and which
would otherwise load on an emulated CPU before the mirror's first answer.

Made from the package's own `__init__` source: each `from .module import name [as alias]`
becomes an entry `alias -> (module, name)`, `__version__` and `__all__` are kept; a block
under `if TYPE_CHECKING:`, the module's own `__getattr__`/`__dir__` and the docstring are
left out. Anything else at its top (a call, an assignment of another name) cannot be made
lazy safely, and is refused: a new release of the package then fails the build, in words,
instead of a guest."""

from __future__ import annotations

import ast

TEMPLATE = '''"""{package}, each name imported when first read (retreatkit.image.lazyinit)."""
import importlib as _importlib

__version__ = {version!r}
__all__ = {all!r}
_WHERE = {where!r}


def __getattr__(name):
    try:
        module, attr = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {{__name__!r}} has no attribute {{name!r}}") from None
    found = _importlib.import_module(module, __name__)
    value = found if attr is None else getattr(found, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
'''


TYPE_CHECKING = ("TYPE_CHECKING", "typing.TYPE_CHECKING")  # what only a type checker reads


class NotLazy(ValueError):
    """The `__init__` holds something that cannot wait until a name is read."""


def lazy_init(package: str, source: str) -> str:
    """The lazy `__init__` source for `package` from its real `__init__` `source`."""
    where: dict[str, tuple[str, str | None]] = {}
    version: object = None
    names: object = ()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                if alias.name == "*":
                    raise NotLazy(f"{package}/__init__.py line {node.lineno}: import *")
                if node.module is None:  # from . import hdrs: the submodule itself
                    where[alias.asname or alias.name] = (f".{alias.name}", None)
                else:
                    where[alias.asname or alias.name] = (f".{node.module}", alias.name)
        elif _assigns(node) in ("__version__", "__all__"):
            assert isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
            value = ast.literal_eval(node.value)
            if _assigns(node) == "__version__":
                version = value
            else:
                names = tuple(value)
        elif not _skipped(node):
            raise NotLazy(
                f"{package}/__init__.py line {node.lineno}: {ast.unparse(node)[:60]!r}"
                " cannot wait until a name is read"
            )
    return TEMPLATE.format(package=package, version=version, all=names, where=where)


def _assigns(node: ast.stmt) -> str | None:
    """The one name a plain assignment (`x = ...` or `x: T = ...`) gives a value."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target: ast.expr | None = node.targets[0]
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target = node.target
    else:
        return None
    return target.id if isinstance(target, ast.Name) else None


def _skipped(node: ast.stmt) -> bool:
    """What a lazy `__init__` does without: the docstring, absolute imports (typing's
    TYPE_CHECKING), what only a type checker reads, and the module's own lazy hooks."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return True
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING:
        return True
    return isinstance(node, ast.FunctionDef) and node.name in ("__getattr__", "__dir__")
