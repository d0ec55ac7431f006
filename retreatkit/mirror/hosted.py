"""The mirror as a service of a retreatkit process: built from [mirror], with its admin routes."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from retreatkit import config
from retreatkit.lanaddress import choose as lan_address
from retreatkit.mirror import apt as apt_format
from retreatkit.mirror import local as mirror_local
from retreatkit.mirror import local_http as mirror_local_http
from retreatkit.mirror import memshare, upstreams
from retreatkit.mirror import resolver as mirror_resolver
from retreatkit.mirror import server as mirror_server
from retreatkit.mirror import space as mirror_space
from retreatkit.mirror import status as mirror_status
from retreatkit.mirror.server import Gate
from retreatkit.mirror.service import Mirror, ServerLimits, Settings
from retreatkit.mirror.status import MirrorCollector
from retreatkit.mirror.store import StoreInUse, StoreUnusable
from retreatkit.mirror.uplink import Limits as FetchLimits
from retreatkit.serve import Say, StartError

log = logging.getLogger("retreatkit.mirror")

if TYPE_CHECKING:
    from retreatkit.mdns import LanAdvert
    from retreatkit.room import Folder

WARM_AFTER = 2.0  # seconds after it listens: its first answers and the admin endpoint first


def default_store() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "retreatkit" / "mirror"


class MirrorService:
    name = "mirror"
    grace = mirror_server.SHUTDOWN_GRACE  # at stop, for requests other than downloads

    def __init__(
        self,
        listen: tuple[str, int],
        settings: Settings,
        announce: bool = True,
        own_wheel: bool = True,
        store_key: str = "[mirror] store",
    ) -> None:
        self.listen = listen
        self.settings = settings
        self.store_key = store_key  # what names another store, in a line for the organiser
        # the running kit as a wheel for attendees; a VM guest's kit is compiled modules
        # without sources or package metadata: nothing to make one from
        self.offers_own_wheel = own_wheel
        self.advert: LanAdvert | None = None
        if announce:  # zeroconf is imported only where it is used
            from retreatkit.mdns import service_advert

            self.advert = service_advert("mirror")
        self.mirror: Mirror | None = None
        self._session: mirror_resolver.Sessions | None = None
        self._warming: asyncio.TimerHandle | None = None
        self._runner: web.AppRunner | None = None
        self._gate: Gate | None = None
        self.url: str | None = None  # where this process reaches the mirror, once started
        self.own_wheel: asyncio.Task[None] | None = None  # publishing the kit for attendees

    @classmethod
    def from_config(
        cls,
        section: dict[str, Any],
        announce: bool = True,
        own_wheel: bool = True,
        store_key: str = "[mirror] store",
    ) -> MirrorService:
        settings = Settings(
            store=Path(section["store"]) if section["store"] else default_store(),
            pypi=section["pypi"] or upstreams.default_pypi(),
            opam=section["opam"] or upstreams.default_opam(),
            index_ttl=float(section["index_ttl"]),
            lists=list(section["lists"]),
            limits=FetchLimits(
                connect_timeout=float(section["connect_timeout"]),
                headers_timeout=float(section["headers_timeout"]),
                read_timeout=float(section["read_timeout"]),
                index_timeout=float(section["index_timeout"]),
                min_rate=float(section["min_download_rate"]),
            ),
            server=ServerLimits(
                per_address=int(section["per_address"]),
                idle_timeout=float(section["idle_timeout"]),
            ),
            keep_free=int(section["keep_free_bytes"]),
            public_url=str(section["public_url"]),
            npm=section["npm"] or upstreams.default_npm(),
            apt=apt_format.checked_origins(section["apt"]) or upstreams.default_apt(),
            apt_keyrings=[*section["apt_keyrings"], *map(str, upstreams.apt_keyrings())],
            max_size=int(section["max_size_bytes"]),
            max_pages_sending=int(section["max_pages_sending_bytes"]),
            page_stall=float(section["page_stall_timeout"]),
            max_pages_reading=int(section["max_pages_reading_bytes"]),
            allow_upstream=list(section["allow_upstream"]),
        )
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        bounds, lowered = memshare.fitted(
            {name: int(getattr(settings, name)) for name in memshare.SHARES}, memory
        )
        settings = replace(
            settings,
            hot_bytes=bounds["hot_bytes"],
            page_bytes=bounds["page_bytes"],
            max_pages_sending=bounds["max_pages_sending"],
            max_pages_reading=bounds["max_pages_reading"],
        )
        if lowered:
            log.info(
                "mirror: memory bounds fitted to this machine's %.0f MB: %s",
                memory / 1e6, ", ".join(lowered),
            )  # fmt: skip
        listen = config.host_port(section["listen"])
        return cls(listen, settings, announce, own_wheel, store_key)

    def folders_written(self) -> list[Folder]:
        """Its store, opened as it starts (room.py)."""
        from retreatkit.room import STORE_NEEDS, Folder  # only where a check runs first

        return [Folder(self.settings.store, "the mirror's store", self.store_key, STORE_NEEDS)]

    async def start(self, registry: CollectorRegistry, say: Say) -> None:
        self._session = mirror_resolver.Sessions()
        try:
            self.mirror = Mirror(self.settings, self._session)
            self._runner, self._gate = await mirror_server.listen(
                self.mirror, *self.listen, self.grace
            )
        except (StoreInUse, StoreUnusable) as exc:
            await self.stop()
            raise StartError(f"the mirror: {exc}") from None
        except BaseException:
            await self.stop()
            raise
        registry.register(MirrorCollector(self.status))
        # the upstream session, made ahead of the first request that needs it, but after the
        # first answers: in a guest, making it imports aiohttp's client (mirror/resolver.py)
        self._warming = asyncio.get_running_loop().call_later(WARM_AFTER, self._session.warm)
        host, port = self._runner.addresses[0][:2]
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{config.host_port_text(local, port)}"
        lan = lan_address().address if host in ("0.0.0.0", "::") else host
        self.mirror.lan_url = f"http://{config.host_port_text(lan, port)}"
        self.mirror.local_url = self.url
        listening = config.host_port_text(host, port)
        say(f"Mirror listening on http://{listening}/ (store {self.settings.store})")
        for ecosystem in ("pypi", "opam", "npm"):
            upstream = getattr(self.settings, ecosystem)
            say(f"Mirror {ecosystem} upstream: {upstream or 'none (pass --' + ecosystem + ' URL)'}")
        apt = ", ".join(f"{n}={u}" for n, u in self.settings.apt.items())
        say(f"Mirror apt origins: {apt or 'none (pass --apt NAME=URL)'}")
        store = self.mirror.store
        warning = mirror_space.start_warning(store.free_bytes(), store.space.keep_free)
        if warning is not None:
            say(warning)
        self.mirror.start(done=say)  # the store check runs while the mirror serves
        if self.advert is not None:
            self.advert.start(host, port)
        if self.offers_own_wheel:
            self.own_wheel = self.mirror.spawn(mirror_local.publish_own(self.mirror, say))

    async def stop(self) -> None:
        """Prompt whatever upstream or client is slow: what waits on an upstream is
        cancelled first (downloads, whose clients are cut at once and whose partial files
        go; revalidations), then the other requests get `grace` seconds to finish."""
        if self.advert is not None:
            await self.advert.stop()
        if self.mirror is not None:
            await self.mirror.stop_work()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.mirror is not None:
            await self.mirror.close()
        if self._warming is not None:
            self._warming.cancel()
        if self._session is not None:
            await self._session.close()

    @property
    def public_url(self) -> str:
        """Where the organiser says attendees reach the mirror; empty: not set."""
        return self.settings.public_url

    def status(self) -> dict[str, Any]:
        if self.mirror is None or self._gate is None:
            return {}
        return mirror_status.section(self.mirror, self.url is not None, self._gate.open)

    def admin_routes(self) -> list[web.RouteDef]:
        running = lambda: self.mirror  # noqa: E731
        return mirror_status.admin_routes(running) + mirror_local_http.admin_routes(running)
