"""A2: the tool pins file (``authorization.tool_pins``): the tool definitions an operator has accepted.

    {"tools": {"weather": "sha256:9f2c...", "delete_records": "sha256:41ab..."}}

Each value is a tool's definition digest (``gateway.mcp.catalogue.definition_digest``: its description,
inputSchema, outputSchema and annotations as canonical JSON). A tool the file names is judged against it
from the first time the gateway sees it listed, across restarts; a tool it does not name is pinned as first
seen by this process. ``mcp-auth-gateway pins accept`` writes the file (atomically: a temporary file renamed
over it); the gateway reads it at start and again when it changes, like the policies (Z2): a file that does
not read is refused and the pins in force stay. A file that does not exist (yet) pins nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_PINS_BYTES = 16 * 1024 * 1024
MAX_PINS = 100_000


class PinsError(ValueError):
    pass


def read_pins(path: Path) -> dict[str, str]:
    """The file's pins; ``{}`` when it does not exist. ``PinsError`` names the file and the key."""
    try:
        if os.stat(path).st_size > MAX_PINS_BYTES:
            raise PinsError(f"{path}: larger than {MAX_PINS_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise PinsError(f"{path}: cannot read: {exc}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise PinsError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(document, dict) or set(document) - {"tools"}:
        raise PinsError(f"{path}: must be an object with one key, tools")
    tools = document.get("tools", {})
    if not isinstance(tools, dict) or len(tools) > MAX_PINS:
        raise PinsError(f"{path}: tools: must be an object of at most {MAX_PINS} tool name -> digest")
    for name, digest in tools.items():
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise PinsError(f"{path}: tools.{name[:80]}: must be a digest like sha256:<64 hex digits>")
    return dict(tools)


def write_pins(path: Path, pins: Mapping[str, str]) -> None:
    """Replace the file atomically (a reader sees the old pins or the new, never half a file)."""
    text = json.dumps({"tools": dict(sorted(pins.items()))}, indent=2, ensure_ascii=False) + "\n"
    folder = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # not a secret; the gateway may run as another user than the operator
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _stamp(path: Path) -> Any:
    try:
        stat = os.stat(path)
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        return None


class PinStore:
    """The pins in force; ``reload_if_changed`` swaps in a changed file that reads, else keeps the old."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp = _stamp(path)
        self.pins = read_pins(path)  # a broken file stops the start (the caller reports it)
        self._refused: Any = None
        if self._stamp is None:
            log.info("%s does not exist (yet): no tool is pinned by file", path)

    def reload_if_changed(self) -> dict[str, str] | None:
        """The new pins when the file changed and reads, else None."""
        stamp = _stamp(self.path)
        if stamp == self._stamp or (stamp is not None and stamp == self._refused):
            return None
        try:
            pins = read_pins(self.path)
        except PinsError as exc:
            self._refused = stamp
            log.error("tool pins change refused; the pins in force stay: %s", exc)
            return None
        self._stamp, self._refused, self.pins = stamp, None, pins
        log.info("tool pins reloaded from %s: %d tools", self.path, len(pins))
        return pins
