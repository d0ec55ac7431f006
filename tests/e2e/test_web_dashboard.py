"""`retreatkit tui --web` loaded by a real headless Chromium: the page needs the token, the
dashboard app starts and paints in the browser, and reads the admin endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from retreatkit.testing import Process
from retreatkit.tui.testing import TOKEN, FakeAdmin, serve

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="chromium is missing (.ci/run installs it)"
    ),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]
# resolves when textual-serve's page has drawn the app's first bytes (it marks the body)
PAINTED = """new Promise(done => {
  const check = () => document.body && document.body.classList.contains("-first-byte");
  if (check()) return done(true);
  new MutationObserver(() => check() && done(true)).observe(document.documentElement,
    {attributes: true, subtree: true});
})"""


async def painted(devtools: str, url: str) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{devtools}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"]) as ws:
            # the first load redirects (the token moves to a cookie), which can end an
            # evaluation under way: ask again in the new page
            for attempt in range(20):
                await ws.send_json(
                    {
                        "id": attempt,
                        "method": "Runtime.evaluate",
                        "params": {
                            "expression": PAINTED,
                            "awaitPromise": True,
                            "returnByValue": True,
                        },
                    }
                )
                async with asyncio.timeout(60):
                    async for message in ws:
                        doc = json.loads(message.data)
                        if doc.get("id") == attempt:
                            break
                if "result" in doc and "exceptionDetails" not in doc["result"]:
                    return bool(doc["result"]["result"].get("value"))
    return False


def test_browser_loads_the_dashboard(tmp_path: Path) -> None:
    with serve(FakeAdmin()) as fake:
        web = Process.start(
            [
                sys.executable,
                "-m",
                "retreatkit.cli.main",
                "tui",
                "--web",
                "--listen",
                "127.0.0.1:0",
                "--connect",
                fake.url,
            ],
            env={"RETREATKIT_TOKEN": TOKEN, "XDG_STATE_HOME": str(tmp_path / "state")},
        )
        try:
            url = web.wait_for(r"^Dashboard on (http://127\.0\.0\.1:\d+)/\?token=(\S+)$")
            base, token = url[1], url[2]
            assert token == TOKEN
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}/", timeout=10)
            assert refused.value.code == 401  # no token, no page
            refused.value.close()
            # the page fetches nothing from the internet (an event may have none)
            jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with jar.open(f"{base}/?token={token}", timeout=10) as page:
                html = page.read().decode()
            assert "textual.js" in html
            fetched = re.findall(r"(?:href|src)=[\"']?(https?:[^\"'> ]+)", html)
            assert fetched
            assert [u for u in fetched if not u.startswith(f"{base}/")] == []
            profile = tmp_path / "chromium"
            browser = subprocess.Popen(
                ["chromium", *FLAGS, f"--user-data-dir={profile}", f"{base}/?token={token}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert browser.stderr is not None
                for line in browser.stderr:  # Chromium says where its DevTools listen
                    if line.startswith("DevTools listening on ws://"):
                        devtools = line.split("ws://", 1)[1].split("/", 1)[0]
                        break
                assert asyncio.run(painted(devtools, base))
                # the dashboard started for the browser reads the endpoint with the token
                deadline = 100
                while not any(
                    p == "/status" and a == f"Bearer {TOKEN}" for _, p, a, _ in fake.seen
                ):
                    deadline -= 1
                    assert deadline, f"no /status read with the token: {fake.seen}"
                    asyncio.run(asyncio.sleep(0.1))  # its first poll is on its way
            finally:
                browser.terminate()
                browser.wait(10)
                if browser.stderr is not None:
                    browser.stderr.close()
        finally:
            assert web.stop() == 0
