"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the browser interop tests.

``async with ChromiumPage() as page``: a fresh profile, ``--remote-debugging-port`` on 127.0.0.1, one page
target; ``goto(url)``, ``evaluate(js)`` (the value, promises awaited), ``wait_for(js)`` (until truthy),
``insert_text(text)`` (typed into the focused element, as a user's keyboard would, so React sees it).
Only aiohttp's WebSocket client: no Puppeteer or Playwright to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.interop.conftest import free_port


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("the browser interop tests need Debian's chromium (make test installs it)")
    return found


class ChromiumPage:
    def __init__(self, *, timeout: float = 30):
        self.timeout = timeout
        self._ids = itertools.count(1)

    async def __aenter__(self) -> ChromiumPage:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        port = free_port()
        with (Path(self._profile.name) / "chromium.log").open("w") as log:
            # Its own process group: Chromium's helper processes (renderer, network, crashpad) go with it.
            self._process = await asyncio.create_subprocess_exec(
                chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-sync", "--disable-component-update",
                f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self._profile.name}", "about:blank",
                stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True)
        self._http = aiohttp.ClientSession()
        try:
            targets = await self._targets(port)
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            self._ws = await self._http.ws_connect(url, max_msg_size=0)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _targets(self, port: int) -> list[dict]:
        async with asyncio.timeout(self.timeout):
            while True:
                try:
                    async with self._http.get(f"http://127.0.0.1:{port}/json/list") as response:
                        return await response.json()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: Any) -> None:
        if getattr(self, "_ws", None) is not None:
            await self._ws.close()
        await self._http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)  # the whole group, not only the browser process
        await self._process.wait()
        # A helper that outlived the browser by a moment may still be writing the profile: remove it again
        # until it stays removed (a stop, not a test failure: the profile is a scratch directory).
        for _ in range(50):
            try:
                shutil.rmtree(self._profile.name)
                break
            except FileNotFoundError:
                break
            except OSError:
                await asyncio.sleep(0.1)
        self._profile.cleanup()

    async def call(self, method: str, **params: Any) -> dict:
        message_id = next(self._ids)
        await self._ws.send_json({"id": message_id, "method": method, "params": params})
        async with asyncio.timeout(self.timeout):
            while True:
                message = await self._ws.receive_json()
                if message.get("id") == message_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float | None = None) -> Any:
        async with asyncio.timeout(seconds or self.timeout):
            while True:
                try:
                    value = await self.evaluate(expression)
                except RuntimeError:
                    value = None
                if value:
                    return value
                await asyncio.sleep(0.1)

    async def insert_text(self, text: str) -> None:
        await self.call("Input.insertText", text=text)
