"""A stand-in for the user's browser, for clients that open one (mcp-remote, through ``open``/``xdg-open``).

Usage: ``headless_browser.py AUTHORIZATION_URL``. Follows the redirects from the authorization URL with
a cookie jar, as a browser would (the test authorization server logs in and consents with plain 303s),
through to the ``redirect_uri`` named in the URL, and requests it, which hands the client its code.
Each URL visited is appended to the file named by ``HEADLESS_BROWSER_LOG`` (if set) as one JSON line.
Exit status 0 when the redirect URI answered 2xx, 1 otherwise.

Only the standard library, so any Python 3 runs it.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urljoin, urlsplit

MAX_REDIRECTS = 15
TIMEOUT = 5  # per request
DEADLINE = 20  # in all: the script runs detached from the test, so it must end by itself


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        return None


def _record(entry: dict) -> None:
    log = os.environ.get("HEADLESS_BROWSER_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")


def browse(url: str) -> int:
    redirect_uri = parse_qs(urlsplit(url).query).get("redirect_uri", [""])[0]
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect(),
        urllib.request.ProxyHandler({}),  # never through a proxy from the environment
    )
    deadline = time.monotonic() + DEADLINE
    for _ in range(MAX_REDIRECTS):
        if time.monotonic() > deadline:
            break
        try:
            with opener.open(url, timeout=TIMEOUT) as response:
                status, location, body = response.status, response.headers.get("Location"), response.read(2000)
        except urllib.error.HTTPError as error:
            status, location, body = error.code, error.headers.get("Location"), error.read(2000)
        except OSError as error:
            return _fail(f"headless browser could not fetch {url}: {error!r}")
        _record({"url": url, "status": status})
        if status in (301, 302, 303, 307, 308) and location:
            url = urljoin(url, location)
            continue
        reached = bool(redirect_uri) and url.startswith(redirect_uri)
        if not (reached and 200 <= status < 300):
            return _fail(f"headless browser stopped at {status} {url}: {body[:500]!r}")
        return 0
    return _fail("headless browser: too many redirects, or out of time")


def _fail(message: str) -> int:
    print(message, file=sys.stderr)  # where it goes, if anywhere: xdg-open runs it without a terminal
    _record({"error": message})
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(browse(sys.argv[1]))
