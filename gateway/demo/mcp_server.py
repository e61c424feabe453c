"""A small MCP server for the demo and the tests: MCP Streamable HTTP on plain aiohttp, no MCP SDK.

Owns the demo's catalogue (five tools, one prompt, one resource) and just enough of the Streamable HTTP
transport (MCP 2025-11-25, "Transports") to be a faithful upstream for the gateway:

- ``POST <path>``: one JSON-RPC message or a batch. Requests are answered with ``application/json``;
  notifications and responses alone get ``202 Accepted`` and no body. The ``countdown`` tool answers with
  ``text/event-stream`` when the client accepts it, to show SSE passing through the gateway.
- ``initialize`` opens a session (``Mcp-Session-Id``). An unknown session id gets 404, as the spec asks;
  a request without one is served anyway (lenient, so curl walkthroughs need no handshake).
- ``GET <path>``: 405, the server offers no standalone stream (allowed by the spec).
- ``DELETE <path>``: ends the session named by ``Mcp-Session-Id``.

Protocol versions: the server implements 2025-11-25. ``initialize`` echoes the client's requested
version when it is one of ``SUPPORTED_PROTOCOL_VERSIONS`` and counters with 2025-11-25 otherwise; a
``MCP-Protocol-Version`` header naming an unsupported version gets 400.

Not checked here: ``Origin`` (the gateway in front does that, E1) and credentials (the gateway again).
The server binds to loopback in the demo and must never be exposed on its own.

Everything lives in the application built by ``create_demo_mcp_app``; nothing is shared between apps
and no module state is mutated, so tests may start as many servers as they like.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal

from aiohttp import web

log = logging.getLogger(__name__)

SERVER_NAME: Final = "demo-mcp-server"
SERVER_VERSION: Final = "0.1.0"

IMPLEMENTED_PROTOCOL_VERSION: Final = "2025-11-25"
SUPPORTED_PROTOCOL_VERSIONS: Final = frozenset({"2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"})

SESSION_HEADER: Final = "Mcp-Session-Id"
PROTOCOL_VERSION_HEADER: Final = "MCP-Protocol-Version"
SSE_HEADERS: Final = MappingProxyType({
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Reverse proxies (nginx) must not hold events back.
    "X-Accel-Buffering": "no",
})

MAX_SESSIONS: Final = 1000
COUNTDOWN_INTERVAL: Final = 0.2

# JSON-RPC 2.0 §5.1 error codes; -32001 and -32002 are the ones MCP servers use for a lost session and an
# unknown resource.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
SESSION_NOT_FOUND: Final = -32001
RESOURCE_NOT_FOUND: Final = -32002

LogLevel = Literal["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
# MCP logging uses the RFC 5424 severities, least severe first.
LOG_LEVELS: Final[tuple[LogLevel, ...]] = (
    "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
)

MessageKind = Literal["request", "notification", "response", "invalid"]


class RpcError(Exception):
    """A JSON-RPC error to answer a request with."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ToolInputError(Exception):
    """Arguments a tool cannot work with: reported as a tool result with ``isError`` (MCP 2025-11-25)."""


# --- the catalogue -------------------------------------------------------------------------------------

Progress = Callable[[int, int, str], Awaitable[None]]
"""``report(progress, total, message)``: how a long-running tool tells the client how far it is."""


async def _no_progress(progress: int, total: int, message: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    title: str
    description: str
    input_schema: Mapping[str, Any]
    annotations: Mapping[str, Any]
    run: Callable[[Mapping[str, Any], Progress], Awaitable[str]]
    streams: bool = False  # answers with text/event-stream when the client accepts it

    def listing(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": _plain(self.input_schema),
            "annotations": _plain(self.annotations),
        }


def _plain(value: Any) -> Any:
    """A fresh JSON-ready copy of a read-only catalogue entry (mappings → dicts, tuples → lists)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


async def _echo(arguments: Mapping[str, Any], report: Progress) -> str:
    return arguments["text"]


async def _add(arguments: Mapping[str, Any], report: Progress) -> str:
    return str(arguments["a"] + arguments["b"])


async def _get_time(arguments: Mapping[str, Any], report: Progress) -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def _delete_records(arguments: Mapping[str, Any], report: Progress) -> str:
    if not arguments["confirm"]:
        raise ToolInputError("Nothing deleted: pass confirm: true to delete.")
    # Nothing is deleted; the count is made up, but stable per table so a demo can be replayed.
    count = zlib.crc32(arguments["table"].encode()) % 1000 + 1
    return f"deleted {count} records from {arguments['table']}"


async def _countdown(arguments: Mapping[str, Any], report: Progress) -> str:
    n = arguments.get("n", 3)
    for step in range(1, n + 1):
        await report(step, n, f"{n - step + 1}...")
        await asyncio.sleep(COUNTDOWN_INTERVAL)
    return f"Liftoff! Counted down from {n}."


def _read_only(title: str) -> Mapping[str, Any]:
    return MappingProxyType({"title": title, "readOnlyHint": True, "destructiveHint": False, "openWorldHint": False})


def _object_schema(properties: Mapping[str, Any], required: tuple[str, ...] = ()) -> Mapping[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties), "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return MappingProxyType(schema)


TOOLS: Final[Mapping[str, Tool]] = MappingProxyType({tool.name: tool for tool in (
    Tool(
        name="echo",
        title="Echo",
        description="Returns the text it is given.",
        input_schema=_object_schema({"text": {"type": "string", "description": "The text to send back."}}, ("text",)),
        annotations=_read_only("Echo"),
        run=_echo,
    ),
    Tool(
        name="add",
        title="Add two integers",
        description="Adds two integers and returns the sum.",
        input_schema=_object_schema({
            "a": {"type": "integer", "description": "The first addend."},
            "b": {"type": "integer", "description": "The second addend."},
        }, ("a", "b")),
        annotations=_read_only("Add two integers"),
        run=_add,
    ),
    Tool(
        name="get_time",
        title="Current time",
        description="Returns the current UTC time in ISO 8601 format.",
        input_schema=_object_schema({}),
        annotations=_read_only("Current time"),
        run=_get_time,
    ),
    Tool(
        name="delete_records",
        title="Delete records",
        description=(
            "Deletes all records from a table (a demonstration: nothing is deleted). "
            "Only admins may call it under the demo policies, and nobody on prod_* tables."
        ),
        input_schema=_object_schema({
            "table": {"type": "string", "minLength": 1, "description": "The table to empty."},
            "confirm": {"type": "boolean", "description": "Must be true: deleting cannot be undone."},
        }, ("table", "confirm")),
        annotations=MappingProxyType({
            "title": "Delete records", "readOnlyHint": False, "destructiveHint": True,
            "idempotentHint": True, "openWorldHint": False,
        }),
        run=_delete_records,
    ),
    Tool(
        name="countdown",
        title="Countdown",
        description=(
            "Counts down from n, one step every 0.2 s, reporting each step as progress (with a progressToken) "
            "or as a log message, over Server-Sent Events."
        ),
        input_schema=_object_schema({
            "n": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3, "description": "Where to start."},
        }),
        annotations=_read_only("Countdown"),
        run=_countdown,
        streams=True,
    ),
)})

README_URI: Final = "demo://readme"
README_TEXT: Final = """\
This is the demo MCP server of mcp-auth-gateway.

It sits behind the gateway, which checks every request's OAuth access token and asks the Cedar
policies in policies/ whether the caller may do what the request asks. Try the tools as different
users: under the example policies everyone may call echo, add, get_time and countdown, only admins
may call delete_records, and nobody may delete from a prod_* table. The tool list differs by user.

Nothing here is real: delete_records deletes nothing and the demo issuer hands out tokens to anyone.
"""

RESOURCES: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType({
    README_URI: MappingProxyType({
        "uri": README_URI,
        "name": "readme",
        "title": "About this demo",
        "description": "What the demo shows and how to try it.",
        "mimeType": "text/plain",
    }),
})

SUMMARIZE_PROMPT: Final = MappingProxyType({
    "name": "summarize",
    "title": "Summarize",
    "description": "Asks the model for a short summary of a text.",
    "arguments": ({"name": "text", "description": "The text to summarize.", "required": True},),
})


def check_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``arguments`` under ``schema`` (the subset of JSON Schema the demo tools use)."""
    problems = [f"missing required argument {name!r}" for name in schema.get("required", ()) if name not in arguments]
    properties = schema.get("properties", {})
    for name, value in arguments.items():
        spec = properties.get(name)
        if spec is None:
            problems.append(f"unexpected argument {name!r}")
            continue
        expected = spec["type"]
        # bool is an int in Python but not an integer in JSON Schema.
        if expected == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name!r} must be an integer")
        elif expected == "string" and not isinstance(value, str):
            problems.append(f"{name!r} must be a string")
        elif expected == "boolean" and not isinstance(value, bool):
            problems.append(f"{name!r} must be a boolean")
        elif expected == "integer" and value < spec.get("minimum", value):
            problems.append(f"{name!r} must be at least {spec['minimum']}")
        elif expected == "integer" and value > spec.get("maximum", value):
            problems.append(f"{name!r} must be at most {spec['maximum']}")
        elif expected == "string" and len(value) < spec.get("minLength", 0):
            problems.append(f"{name!r} must not be empty")
    return problems


# --- sessions ------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Session:
    id: str
    protocol_version: str
    log_level: LogLevel = "info"

    def logs(self, level: LogLevel) -> bool:
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)


class Sessions:
    """The open sessions of one server; the oldest is forgotten beyond ``limit`` (a demo keeps no more)."""

    def __init__(self, limit: int = MAX_SESSIONS):
        self._open: OrderedDict[str, Session] = OrderedDict()
        self._limit = limit

    def open(self, protocol_version: str) -> Session:
        session = Session(secrets.token_urlsafe(24), protocol_version)
        self._open[session.id] = session
        while len(self._open) > self._limit:
            self._open.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session | None:
        return self._open.get(session_id)

    def close(self, session_id: str) -> bool:
        return self._open.pop(session_id, None) is not None

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._open


# --- JSON-RPC ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Call:
    """One JSON-RPC request being answered: its params, its session and where notifications go."""

    params: Mapping[str, Any]
    session: Session | None
    notify: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None


def message_kind(message: Any) -> MessageKind:
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return "invalid"
    if "method" in message:
        if not isinstance(message["method"], str) or not isinstance(message.get("params", {}), dict):
            return "invalid"
        if "id" not in message:
            return "notification"
        # MCP: a request id is a string or an integer, never null.
        rpc_id = message["id"]
        return "request" if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool) else "invalid"
    if "id" in message and ("result" in message or "error" in message):
        return "response"
    return "invalid"


def result_message(rpc_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def error_message(rpc_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}}


def _tool_result(text: str, *, error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": error}


async def _initialize(call: Call) -> dict[str, Any]:
    requested = call.params.get("protocolVersion")
    if not isinstance(requested, str):
        raise RpcError(INVALID_PARAMS, "initialize needs params.protocolVersion")
    # MCP lifecycle: answer with the requested version if supported, else with one the server supports.
    version = requested if requested in SUPPORTED_PROTOCOL_VERSIONS else IMPLEMENTED_PROTOCOL_VERSION
    return {
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": False}, "prompts": {}, "resources": {}, "logging": {}},
        "serverInfo": {"name": SERVER_NAME, "title": "Demo MCP server", "version": SERVER_VERSION},
        "instructions": "A demonstration server. Read demo://readme for what it shows.",
    }


async def _ping(call: Call) -> dict[str, Any]:
    return {}


async def _tools_list(call: Call) -> dict[str, Any]:
    return {"tools": [tool.listing() for tool in TOOLS.values()]}


async def _tools_call(call: Call) -> dict[str, Any]:
    name, arguments = call.params.get("name"), call.params.get("arguments")
    tool = TOOLS.get(name) if isinstance(name, str) else None
    if tool is None:
        # MCP 2025-11-25: an unknown tool is a protocol error, bad arguments are a tool error.
        raise RpcError(INVALID_PARAMS, f"Unknown tool: {name!r}")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return _tool_result("Invalid arguments: arguments must be an object", error=True)
    problems = check_arguments(tool.input_schema, arguments)
    if problems:
        return _tool_result("Invalid arguments: " + "; ".join(problems), error=True)
    try:
        return _tool_result(await tool.run(arguments, _progress_reporter(call, tool.name)))
    except ToolInputError as exc:
        return _tool_result(str(exc), error=True)


def _progress_reporter(call: Call, logger_name: str) -> Progress:
    """Progress notifications when the client asked for them (``_meta.progressToken``), else log messages."""
    notify = call.notify
    if notify is None:
        return _no_progress
    meta = call.params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    session = call.session

    async def report(progress: int, total: int, message: str) -> None:
        if token is not None:
            params = {"progressToken": token, "progress": progress, "total": total, "message": message}
            await notify("notifications/progress", params)
        elif session is None or session.logs("info"):
            await notify("notifications/message", {"level": "info", "logger": logger_name, "data": message})

    return report


async def _prompts_list(call: Call) -> dict[str, Any]:
    return {"prompts": [_plain(SUMMARIZE_PROMPT)]}


async def _prompts_get(call: Call) -> dict[str, Any]:
    if call.params.get("name") != SUMMARIZE_PROMPT["name"]:
        raise RpcError(INVALID_PARAMS, f"Unknown prompt: {call.params.get('name')!r}")
    arguments = call.params.get("arguments") or {}
    text = arguments.get("text") if isinstance(arguments, dict) else None
    if not isinstance(text, str):
        raise RpcError(INVALID_PARAMS, "Missing required argument 'text'")
    return {
        "description": SUMMARIZE_PROMPT["description"],
        "messages": [{
            "role": "user",
            "content": {"type": "text", "text": f"Please summarize the following text in two sentences:\n\n{text}"},
        }],
    }


async def _resources_list(call: Call) -> dict[str, Any]:
    return {"resources": [_plain(resource) for resource in RESOURCES.values()]}


async def _resources_read(call: Call) -> dict[str, Any]:
    uri = call.params.get("uri")
    if uri not in RESOURCES:
        raise RpcError(RESOURCE_NOT_FOUND, f"Resource not found: {uri!r}")
    return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": README_TEXT}]}


async def _resources_templates_list(call: Call) -> dict[str, Any]:
    return {"resourceTemplates": []}


async def _logging_set_level(call: Call) -> dict[str, Any]:
    level = call.params.get("level")
    if level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"Unknown log level: {level!r}")
    if call.session is not None:
        call.session.log_level = level
    return {}


METHODS: Final[Mapping[str, Callable[[Call], Awaitable[dict[str, Any]]]]] = MappingProxyType({
    "initialize": _initialize,
    "ping": _ping,
    "tools/list": _tools_list,
    "tools/call": _tools_call,
    "prompts/list": _prompts_list,
    "prompts/get": _prompts_get,
    "resources/list": _resources_list,
    "resources/read": _resources_read,
    "resources/templates/list": _resources_templates_list,
    "logging/setLevel": _logging_set_level,
})


async def answer(message: Mapping[str, Any], call: Call) -> dict[str, Any]:
    """The JSON-RPC response to one request (never raises)."""
    rpc_id = message["id"]
    handler = METHODS.get(message["method"])
    if handler is None:
        return error_message(rpc_id, METHOD_NOT_FOUND, f"Method not found: {message['method']}")
    try:
        return result_message(rpc_id, await handler(call))
    except RpcError as exc:
        return error_message(rpc_id, exc.code, exc.message)
    except ConnectionResetError:
        raise  # the client left an SSE stream mid-call: nothing failed, and nobody is left to answer
    except Exception:
        log.exception("demo MCP server: %s failed", message["method"])
        return error_message(rpc_id, INTERNAL_ERROR, "Internal error")


# --- HTTP ----------------------------------------------------------------------------------------------

def _media_ranges(request: web.Request) -> set[str] | None:
    """The media ranges of ``Accept`` without parameters; None when there is no Accept (anything goes)."""
    header = request.headers.get("Accept")
    if header is None:
        return None
    return {part.split(";", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


def _accepts(ranges: set[str] | None, media_type: str) -> bool:
    if ranges is None:
        return True
    return bool(ranges & {media_type, media_type.split("/", 1)[0] + "/*", "*/*"})


def _rpc_error_response(status: int, code: int, message: str, rpc_id: Any = None) -> web.Response:
    return web.json_response(error_message(rpc_id, code, message), status=status)


class DemoMcpServer:
    """The HTTP side: one instance per application, holding that server's sessions."""

    def __init__(self) -> None:
        self.sessions = Sessions()

    async def post(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            return _rpc_error_response(415, INVALID_REQUEST, "Content-Type must be application/json")
        ranges = _media_ranges(request)
        if not (_accepts(ranges, "application/json") or _accepts(ranges, "text/event-stream")):
            return _rpc_error_response(406, INVALID_REQUEST, "Accept must allow application/json or text/event-stream")
        version = request.headers.get(PROTOCOL_VERSION_HEADER)
        if version is not None and version not in SUPPORTED_PROTOCOL_VERSIONS:
            return _rpc_error_response(400, INVALID_REQUEST, f"Unsupported protocol version: {version[:40]}")
        try:
            body = json.loads(await request.read())
        except ValueError:  # UnicodeDecodeError is a ValueError too
            return _rpc_error_response(400, PARSE_ERROR, "Parse error")

        if isinstance(body, list):
            return await self._batch(request, body)
        kind = message_kind(body)
        if kind == "invalid":
            rpc_id = body.get("id") if isinstance(body, dict) else None
            rpc_id = rpc_id if isinstance(rpc_id, str | int) else None
            return _rpc_error_response(400, INVALID_REQUEST, "Invalid JSON-RPC message", rpc_id)
        if kind == "request" and body["method"] == "initialize":
            return await self._initialize(body)
        session, refused = self._session(request)
        if refused is not None:
            return refused
        if kind != "request":
            return web.Response(status=202)
        call = Call(body.get("params", {}), session)
        name = call.params.get("name") if body["method"] == "tools/call" else None
        tool = TOOLS.get(name) if isinstance(name, str) else None
        streaming_tool = tool is not None and tool.streams and ranges is not None and "text/event-stream" in ranges
        if streaming_tool or not _accepts(ranges, "application/json"):
            return await self._stream(request, body, call)
        return web.json_response(await answer(body, call))

    async def _initialize(self, message: Mapping[str, Any]) -> web.Response:
        # A new session, whatever Mcp-Session-Id the client may still be sending.
        response = await answer(message, Call(message.get("params", {}), None))
        if "error" in response:
            return web.json_response(response)
        session = self.sessions.open(response["result"]["protocolVersion"])
        return web.json_response(response, headers={SESSION_HEADER: session.id})

    def _session(self, request: web.Request) -> tuple[Session | None, web.Response | None]:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            return None, None
        session = self.sessions.get(session_id)
        if session is None:
            # MCP transports: a terminated or unknown session gets 404, and the client starts over.
            return None, _rpc_error_response(404, SESSION_NOT_FOUND, "Session not found")
        return session, None

    async def _batch(self, request: web.Request, batch: list[Any]) -> web.Response:
        # JSON-RPC batches were dropped in MCP 2025-06-18; a lenient demo still answers 2025-03-26 clients.
        if not batch:
            return _rpc_error_response(400, INVALID_REQUEST, "Empty batch")
        session, refused = self._session(request)
        if refused is not None:
            return refused
        responses = []
        for message in batch:
            kind = message_kind(message)
            if kind == "invalid":
                responses.append(error_message(None, INVALID_REQUEST, "Invalid JSON-RPC message"))
            elif kind == "request" and message["method"] == "initialize":
                refusal = error_message(message["id"], INVALID_REQUEST, "initialize must not be part of a batch")
                responses.append(refusal)
            elif kind == "request":
                responses.append(await answer(message, Call(message.get("params", {}), session)))
        if not responses:
            return web.Response(status=202)
        return web.json_response(responses)

    async def _stream(self, request: web.Request, message: Mapping[str, Any], call: Call) -> web.StreamResponse:
        """Answers one request over SSE: its notifications as they happen, then the response; then closes."""
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        # MCP transports: event ids are unique across all streams of a session.
        stream_id = secrets.token_urlsafe(8)
        sequence = 0

        async def send(payload: Mapping[str, Any]) -> None:
            nonlocal sequence
            sequence += 1
            data = json.dumps(payload, separators=(",", ":"))
            await response.write(f"id: {stream_id}-{sequence}\nevent: message\ndata: {data}\n\n".encode())

        async def notify(method: str, params: Mapping[str, Any]) -> None:
            await send({"jsonrpc": "2.0", "method": method, "params": params})

        try:
            await send(await answer(message, Call(call.params, call.session, notify)))
            await response.write_eof()
        except ConnectionResetError:
            log.debug("demo MCP server: client left the stream of %s", message["method"])
        return response

    async def get(self, request: web.Request) -> web.Response:
        # MCP transports: a server that offers no standalone SSE stream answers GET with 405.
        text = "This server offers no standalone stream.\n"
        return web.Response(status=405, headers={"Allow": "POST, DELETE"}, text=text)

    async def delete(self, request: web.Request) -> web.Response:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            return _rpc_error_response(400, INVALID_REQUEST, f"{SESSION_HEADER} header required")
        if not self.sessions.close(session_id):
            return _rpc_error_response(404, SESSION_NOT_FOUND, "Session not found")
        return web.Response(status=204)


DEMO_MCP_SERVER: Final = web.AppKey("demo_mcp_server", DemoMcpServer)


def create_demo_mcp_app(*, path: str = "/mcp") -> web.Application:
    """An aiohttp application serving the demo MCP server at ``path``.

    The server's state (its sessions) is at ``app[DEMO_MCP_SERVER]``.
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    server = DemoMcpServer()
    app = web.Application()
    app[DEMO_MCP_SERVER] = server
    app.router.add_route("POST", path, server.post)
    app.router.add_route("GET", path, server.get)
    app.router.add_route("DELETE", path, server.delete)
    return app
