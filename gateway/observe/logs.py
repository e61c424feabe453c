"""Process-wide logging set-up: JSON lines for machines (default) or plain text for people.

Log lines carry reasons, never tokens, secrets or claim values (T11, I9). Extra fields given with
``log.info(..., extra={"fields": {...}})`` become top-level keys of the JSON line, ``key=value`` pairs
of the text line.

Two defences sit on the one handler, so every logger (the gateway's, aiohttp's, any library's) gets them:

- ``RedactingFilter`` removes bearer values, ``access_token=…``-style parameters, ``Authorization``
  values and JWT-shaped strings from the message, the exception text and every field value, nested
  ones included. A path is client input: ``POST /mcp/eyJhbGciOi…`` would otherwise put a token in the
  access log.
- ``TextFormatter`` escapes control characters, so a client cannot forge a line: aiohttp's
  ``request.path`` is percent-decoded, and ``/mcp%0a2026-01-01 … INFO …`` would start a new one. JSON
  lines are safe as they are (``json.dumps`` escapes every control character and, with ``ensure_ascii``,
  U+2028 and U+2029).

P1: the access line is written once per request, so it is cheap. ``log_access`` redacts the values a client
chooses (method, path, request id) once and marks the record ``redacted``: the filter then has nothing left
to do. ``JsonFormatter`` writes lines whose fields are strings and numbers by hand (the same bytes
``json.dumps`` would write) and formats the time's seconds once per second.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import re
import select
import stat
import sys
import time
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

REDACTED = "[redacted]"

# Defence in depth for T11: whatever a library logs (aiohttp prints bad request lines and headers), a
# secret that announces itself never reaches the output. ``keep`` is the part that names it.
_VALUE = r"[^\s\"'&;,#<>]+"
_SECRET_NAME = r"[\w-]*(?:token|secret|password|api[_-]?key|assertion)"
_SECRETS = re.compile(
    r"(?P<keep>"
    r"\b(?i:bearer|dpop)\s+"  # RFC 6750 §2.1, RFC 9449 §7.1: "Authorization: Bearer <token>"
    rf"|(?<![\w-])(?i:{_SECRET_NAME}|code)\s*=\s*"  # RFC 6750 §2.3: ?access_token=…, client_secret=…
    rf"|\"(?i:{_SECRET_NAME})\"\s*:\s*\""  # a JSON answer from a token endpoint: "access_token": "…"
    r"|\b(?i:(?:proxy-)?authorization)[\"']?\s*[:=]\s*[\"']?(?:[A-Za-z][\w-]*[ \t]+)?"  # any scheme, or none
    rf"){_VALUE}"
    # JWS and JWE compact forms (RFC 7515 §7.1, RFC 7516 §7.1): a base64 JSON object first, so "ey" or
    # "ew" ('{' then '"', space or a line break) or "e3" ("{}"), at least ten characters (the shortest real
    # header, {"alg":"X"}, has fifteen: dotted names such as keys.jwks.fetch stay), then two to four more
    # dot-separated parts. Wherever it starts: /mcp/eyJ… and xeyJ… alike.
    r"|e[wy3][A-Za-z0-9_\-+/]{8,}={0,2}(?:\.[A-Za-z0-9_\-+/]*={0,2}){2,4}"
)


def _replace(match: re.Match[str]) -> str:
    return (match.group("keep") or "") + REDACTED


def redact(text: str) -> str:
    # Every pattern needs a dot, an '=', a ':' or whitespace: most field values (``/mcp``, request ids,
    # reason codes, methods) have none of them and skip the regular expression.
    if "." in text or "=" in text or ":" in text or " " in text or not text.isprintable():
        return _SECRETS.sub(_replace, text)
    return text


def redact_value(value: Any) -> Any:
    """``value`` with every string in it redacted; the same object when nothing changed."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        cleaned = {key: redact_value(item) for key, item in value.items()}
        return value if all(cleaned[key] is item for key, item in value.items()) else cleaned
    if isinstance(value, (list, tuple)):
        items = [redact_value(item) for item in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    # Anything else is written as str() by both formatters (URLs, paths, exceptions): redact that.
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get("redacted") is True:  # built from redacted values by log_access
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments: the formatter fails again and logging reports it as usual
            message = None
        if message is not None:
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, "fields", None)
        if fields is not None:
            try:
                record.fields = redact_value(fields)
            except RecursionError:  # a field that contains itself: drop the fields, keep the line
                record.fields = {"fields": REDACTED}
        return True


# The keys every JSON line starts with; a field of the same name replaces its value (json.dumps of the
# merged dict), which the hand-written line leaves to json.dumps.
_BASE_KEYS = frozenset({"time", "level", "logger", "message", "exception"})
_ENCODER = json.JSONEncoder(default=str)  # json.dumps(..., default=str) without building an encoder per line


def json_scalar(value: Any) -> str | None:
    """``value`` as json.dumps writes it, for strings and finite numbers; None for anything else."""
    kind = type(value)
    if kind is str:
        return _json_string(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return None


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")
        self._strings: dict[str, str] = {}  # level names, logger names and field names as JSON strings

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:  # one strftime a second, not one a line
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)))
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def _name(self, name: str) -> str:
        text = self._strings.get(name)
        if text is None:
            text = _json_string(name)
            if len(self._strings) < 4096:
                self._strings[name] = text
        return text

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        exception = self.formatException(record.exc_info) if record.exc_info else record.exc_text or None
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict):
            fields = {}
        # Flat fields of strings and finite numbers (the access line, refusals): written by hand, as
        # json.dumps would write them; anything else goes to json.dumps.
        line = (f'{{"time": "{self._time(record)}", "level": {self._name(record.levelname.lower())}, '
                f'"logger": {self._name(record.name)}, "message": {_json_string(message)}')
        for key, value in fields.items():
            kind = type(value)
            if kind is str:
                text = _json_string(value)
            elif kind is int:
                text = int.__repr__(value)
            elif kind is float and math.isfinite(value):
                text = float.__repr__(value)
            else:
                return self._dumps(record, message, exception, fields)
            if type(key) is not str or key in _BASE_KEYS:
                return self._dumps(record, message, exception, fields)
            line += f", {self._name(key)}: {text}"
        if exception is not None:
            line += f', "exception": {_json_string(exception)}'
        return line + "}"

    def _dumps(self, record: logging.LogRecord, message: str, exception: str | None, fields: dict[Any, Any]) -> str:
        line = {"time": self._time(record), "level": record.levelname.lower(), "logger": record.name, "message": message}
        line.update(fields)
        if exception is not None:
            line["exception"] = exception
        return _ENCODER.encode(line)


# C0, DEL, C1 and the Unicode line and paragraph separators: what a terminal, a log shipper or an editor
# may take for the end of a line (or use to rewrite one).
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_QUOTED = {**_CONTROLS, ord("\\"): "\\\\", ord('"'): '\\"'}


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters written as escapes (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return text if text.isprintable() else text.translate(_CONTROLS)


def _field_text(value: Any) -> str:
    """A field value as one token: quoted, with escapes, when it holds anything but plain characters, so
    neither a line nor another ``key=value`` pair can be forged inside it."""
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return '"' + text.translate(_QUOTED) + '"'


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(self.formatMessage(record))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{_field_text(str(key))}={_field_text(value)}" for key, value in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        # A traceback keeps its lines, each indented under the record it belongs to: no line of it can
        # pass for a record of its own, whatever the exception's message holds.
        for extra in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if extra:
                text += "".join("\n  | " + escape_controls(line) for line in extra.split("\n"))
        return text


class MalformedHttpFilter(logging.Filter):
    """R5, I9: a request aiohttp's parser refuses is the client's mistake, not ours: one INFO line naming
    the kind of problem, instead of an ERROR traceback quoting the raw bytes (which may hold a secret)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info, record.exc_text = (
                "refused a malformed HTTP request (%s, %s)", (type(exc).__name__, exc.code), None, None)
        return True


_PLAIN_METHODS = frozenset({"GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH"})
_ACCESS_TEMPLATES: dict[str, dict[str, Any]] = {}  # logger name -> the attributes of one access record


def log_access(logger: logging.Logger, method: str, path: str, status: int, request_id: str, duration_ms: float) -> None:
    """The access line of one request: ``POST /mcp 200`` with these as fields.

    The method, the path and the request id are the client's (a method is any token, ``eyJ….….…``
    included), so each is redacted here, once; the record is marked ``redacted`` for ``RedactingFilter``.
    Emitted as a record of ``logger``, so levels, handlers and formats apply as to any other line; it is
    also marked ``access_line``, which ``LineBuffer`` holds for a moment (P1).
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    if method not in _PLAIN_METHODS:
        method = redact(method)
    path, request_id = redact(path), redact(request_id)
    record = _access_record(logger, (method, path, status))
    record.fields = {"request_id": request_id, "method": method, "path": path, "status": status, "duration_ms": duration_ms}
    record.redacted = True
    record.access_line = True
    logger.handle(record)


def _access_record(logger: logging.Logger, args: tuple[Any, ...]) -> logging.LogRecord:
    """What ``logger.makeRecord`` makes for an access line, without its per-record work on the source path
    (always this file) and its thread and process look-ups (``configure_logging`` turns them off): a copy
    of one record made once per logger, with this moment's time. Made by ``makeRecord`` whenever logging
    is set up to look anything up per record, or records are made another way."""
    if (logging.logThreads or logging.logProcesses or logging.logMultiprocessing or getattr(logging, "logAsyncioTasks", False)
            or logging.getLogRecordFactory() is not logging.LogRecord or type(logger).makeRecord is not logging.Logger.makeRecord):
        return logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s %s %d", args, None)
    template = _ACCESS_TEMPLATES.get(logger.name)
    if template is None:
        template = vars(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s %s %d", (), None)).copy()
        if len(_ACCESS_TEMPLATES) < 64:
            _ACCESS_TEMPLATES[logger.name] = template
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(template)
    now = time.time()
    record.created = now
    record.msecs = int((now - int(now)) * 1000) + 0.0
    record.relativeCreated = template["relativeCreated"] + (now - template["created"]) * 1000
    record.args = args
    return record


# P1: access lines wait at most this long (or until this many characters are held) before they are
# written, all at once; any other line writes them first, so the order of lines is kept.
ACCESS_FLUSH_S = 0.2
ACCESS_BUFFER_CHARS = 64 * 1024


class LineBuffer(logging.StreamHandler):  # type: ignore[type-arg]
    """The log handler: every line written at once, except access lines (one per request, ``log_access``),
    which are held for up to ``ACCESS_FLUSH_S`` and written together. Held lines are written by the next
    line that is not an access line, by the timer, by ``flush()`` (``logging.shutdown`` at exit, and the
    end of ``gateway.app.serve``), or when ``ACCESS_BUFFER_CHARS`` are held. Without a running event loop
    (start-up, a script) nothing is held. Into a pipe (a container's stderr, shared by the workers) the
    lines go in writes of whole lines of at most ``PIPE_BUF`` bytes, which the kernel keeps whole."""

    def __init__(self, stream: Any = None):
        super().__init__(stream)
        self._held: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._piece = _pipe_piece(self.stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        try:
            if record.__dict__.get("access_line") is True and self._hold(line):
                return
            self._held.append(line)
            self._write_held()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _hold(self, line: str) -> bool:
        """Keep ``line`` for a timer to write; False when there is no event loop to run one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._held.append(line)
        self._size += len(line)
        if self._size >= ACCESS_BUFFER_CHARS:
            self._write_held()
        elif self._timer is None:
            self._timer = loop.call_later(ACCESS_FLUSH_S, self.flush)
        return True

    def _write_held(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._held, self._size = self._held, [], 0
        for piece in _pieces(lines, self._piece):
            self.stream.write(piece)
        self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._held:
                try:
                    self._write_held()
                except Exception:  # as StreamHandler does with a line it cannot write: report, go on
                    if logging.raiseExceptions:
                        import traceback

                        traceback.print_exc(file=sys.__stderr__)
            elif self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()


def _pipe_piece(stream: Any) -> int | None:
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return select.PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def _pieces(lines: list[str], piece: int | None) -> list[str]:
    """The lines joined into writes: one, or whole lines of at most ``piece`` bytes each (a longer line alone)."""
    if piece is None or len(lines) == 1:
        return ["".join(lines)]
    out: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode("utf-8", "surrogateescape")) if not line.isascii() else len(line)
        if current and size + length > piece:
            out.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += length
    out.append("".join(current))
    return out


def flush_logs() -> None:
    """Write whatever the root logger's handlers hold (the end of ``serve``)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    # Neither format writes thread, process or task names: do not look them up for every record (P1; the
    # logging HOWTO's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # Python 3.12+; unused before
    handler = LineBuffer(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in root.handlers:
        old.flush()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by the gateway's (one line per request, with a reason).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedHttpFilter) for f in server.filters):
        server.addFilter(MalformedHttpFilter())
