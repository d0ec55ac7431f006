"""The admin token: random, created on the first start, kept mode 0600 in the state folder."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

ENV = "RETREATKIT_TOKEN"
TOKEN_BYTES = 32


class TokenError(Exception):
    """The token file cannot be made or read safely; the message names the path."""


def state_dir() -> Path:
    """`$XDG_STATE_HOME/retreatkit`, else `~/.local/state/retreatkit`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "retreatkit"


def token_path() -> Path:
    return state_dir() / "admin-token"


def load_or_create(path: Path | None = None) -> str:
    """The token in `path`, made on the first call. A file others can read is refused:
    anyone who can read it can act on the LAN's services."""
    path = path or token_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenError(f"cannot make {path.parent} for the admin token: {exc.strerror}") from None
    try:
        found = path.exists()
    except OSError as exc:  # a folder it may not search
        raise TokenError(f"cannot read the admin token {path}: {exc.strerror}") from None
    if found:
        return read(path)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    # written whole under a name of its own, then linked in place: link() fails if the
    # name exists, so two processes starting at once agree on one token, and neither
    # reads the other's file before its token is in it (O_EXCL on the name itself left
    # an empty file for a moment, and a second start read it as "empty")
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        _create(draft, token)
        try:
            os.link(draft, path)
        except OSError as exc:
            if exc.errno not in NO_LINKS:
                raise
            # vfat, some FUSE and SMB mounts have no hard links: written under its name
            # (a start at the very same moment on such a folder may find it empty)
            _create(path, token)
    except FileExistsError:
        return read(path)
    except OSError as exc:  # a full disk: nothing is left that would stop a later start
        raise TokenError(f"cannot write the admin token {path}: {exc.strerror}") from None
    finally:
        # on a read-only folder unlink() fails even for no file (EROFS before ENOENT): its
        # error replaced the one above and named the draft, not the token
        with contextlib.suppress(OSError):
            draft.unlink(missing_ok=True)
    return token


NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV)


def _create(path: Path, token: str) -> None:
    """`token` written to a new file `path`, 0600 from birth (never a moment with a
    readable file): FileExistsError if there is one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    except OSError:
        path.unlink(missing_ok=True)  # no empty token left to stop every later start
        raise


def read(path: Path | None = None) -> str:
    """The token in `path`; TokenError if it is missing, empty or readable by others."""
    path = path or token_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise TokenError(f"no admin token at {path}: start a service first") from None
    except OSError as exc:
        raise TokenError(f"cannot read the admin token {path}: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenError(f"the admin token {path} is open to others: chmod 600 {path}")
        token = f.read(1024).strip()
    if not token:
        raise TokenError(f"the admin token {path} is empty: delete it and start again")
    return token


def given(flag: str | None) -> str | None:
    """The token for a remote endpoint: `--token`, else $RETREATKIT_TOKEN."""
    return flag or os.environ.get(ENV) or None
