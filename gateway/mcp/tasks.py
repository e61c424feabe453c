"""M4: a task id belongs to the principal that received it (tasks extension, SEP-2663; SEP-2567).

A task id is a server-minted handle: whoever holds it may poll the task, answer its input requests, cancel
it and read its result. The upstream sees only the gateway, so it cannot tell principals apart; the
gateway binds each id the way it binds session ids (``gateway.mcp.sessions``), statelessly: the client
never sees the upstream's id, only ``g1.<issued-at + upstream id>.<MAC>`` sealed for its principal with
the purpose label ``mcp-task`` (so a session id never passes as a task id, nor the other way round).

Requests. ``params.taskId`` of ``tasks/get``, ``tasks/update``, ``tasks/cancel`` (and 2025-11-25's
``tasks/result``) and every id in ``subscriptions/listen``'s ``params.notifications.taskIds`` must open
for the caller; else ``404`` with a JSON-RPC error, nothing forwarded. The upstream gets its own ids
(body and ``Mcp-Name``).

Answers. A task the answer creates (``resultType: "task"``, or 2025-11-25's ``result.task``) to a request
that can create one (``tools/call``) is sealed for the caller. An id the request named is given back as the
client's own handle. Any other id is the upstream's business, not the caller's: it is never sealed for
them. A 2025-11-25 ``tasks/list`` keeps only the tasks this request named (so: none; the gateway cannot
know whose the others are), task notifications for a task the request did not name are dropped, and an
acknowledgement keeps only the ids the listen named. Ids the client sent are refused unless sealed, so a
raw id that slips through (a spelling this module does not read) is of no use through the gateway.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from gateway.auth.principal import Principal
from gateway.errors import NotFound, UpstreamError
from gateway.mcp.jsonrpc import Batch, MalformedMessage, Message, fold_key, serialize
from gateway.mcp.listing import fold
from gateway.mcp.sessions import BoundHandles, HandleRefused
from gateway.mcp.sse import Event, format_event, parse_event

log = logging.getLogger(__name__)

PURPOSE = b"mcp-task"
NAMING_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel", "tasks/result"})
CREATING_METHODS = frozenset({"tools/call"})
TASK_NOTIFICATIONS = frozenset({"notifications/tasks", "notifications/tasks/status"})
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
RELATED_TASK = "io.modelcontextprotocol/related-task"
MAX_EVENT_PARSE = 8 * 1024 * 1024  # the default of upstream.max_list_bytes
MAX_TASK_ID = 1024  # bytes of an upstream id the gateway seals; a longer one stays raw (and so unusable)
# What an answer must contain to name a task where this module looks: a "task", "taskId", "taskIds" or
# "tasks" key, the notifications/tasks method (also as notifications\/tasks), or an escaped ASCII letter
# that could spell one of them (task\u0049d).
_MAY_MENTION = re.compile(rb'"task(?:id|ids|s)?"|notifications\\?/tasks|\\u00[4-7][0-9a-f]', re.IGNORECASE)


def may_mention(raw: bytes) -> bool:
    """False only for an answer that cannot hold a task this module rewrites (the proxy's pre-check)."""
    return _MAY_MENTION.search(raw) is not None


class TaskNotFound(NotFound):
    default_message = "Task not found"

    def __init__(self, reason: str, detail: str, rpc_id: Any = None):
        super().__init__(reason, detail)
        self.rpc_id = rpc_id  # the request that named the task: its JSON-RPC error answers it


def _dumps(document: Any) -> bytes:
    try:
        return json.dumps(document, allow_nan=False).encode()
    except (ValueError, RecursionError) as exc:  # 1e400 read as inf: not JSON when written back
        raise UpstreamError("upstream_unreadable_task", f"an answer naming a task cannot be written back ({exc})") from None


class TaskBindings:
    def __init__(self, handles: BoundHandles):
        self._handles = handles

    def open(self, handle: Any, principal: Principal, rpc_id: Any) -> str:
        if not isinstance(handle, str):
            raise TaskNotFound("task_unknown", "a task id that is not a string", rpc_id)
        try:
            return self._handles.open(handle, principal)
        except HandleRefused as refused:
            raise TaskNotFound(f"task_{refused.reason}", "the task id is not bound to this caller", rpc_id) from None

    def seal(self, upstream_id: str, principal: Principal) -> str:
        return self._handles.seal(upstream_id, principal)

    def unwrap_requests(self, batch: Batch, principal: Principal) -> tuple[Batch, dict[str, str]]:
        """The batch as the upstream must get it, and {upstream id: the client's handle} for the answers."""
        upstream: dict[str, str] = {}  # the client's handle -> the upstream's id
        for message in batch.messages:
            for handle in named_handles(message):
                upstream[handle] = self.open(handle, principal, message.id)
        known: dict[str, str] = {}
        for handle, raw in upstream.items():
            known.setdefault(raw, handle)  # two handles for one task (sealed twice): answers use the first
        if not known:
            return batch, known
        document = json.loads(batch.canonical)
        for wire in document if isinstance(document, list) else [document]:
            params = wire.get("params")
            if not isinstance(params, dict):
                continue
            if wire.get("method") in NAMING_METHODS:
                params["taskId"] = upstream[params["taskId"]]
            elif wire.get("method") == "subscriptions/listen":
                notifications = params["notifications"]
                notifications["taskIds"] = [upstream[handle] for handle in notifications["taskIds"]]
        return Batch(batch.messages, is_array=batch.is_array, canonical=serialize(document)), known

    def answers(self, principal: Principal, known: Mapping[str, str], batch: Batch | None, *,
                max_bytes: int = 8 * 1024 * 1024) -> TaskAnswers:
        creates = batch is not None and any(m.method in CREATING_METHODS for m in batch.messages)
        return TaskAnswers(self, principal, known, creates=creates, max_bytes=max_bytes)


def _spelled_exactly(obj: Mapping[str, Any], member: str, where: str) -> None:
    """I2: ``TaskId`` beside ``taskId`` would be another id to a case-insensitive (Go) upstream."""
    folded = fold_key(member)
    if any(fold_key(key) == folded and key != member for key in obj):
        raise MalformedMessage("member_spelling", f"{where} spells {member!r} another way")


def named_handles(message: Message) -> list[Any]:
    """The task handles a client message names (each must be the caller's)."""
    if message.method in NAMING_METHODS:
        _spelled_exactly(message.params, "taskId", f"{message.method} params")
        return [message.params.get("taskId")]
    if message.method == "subscriptions/listen":
        _spelled_exactly(message.params, "notifications", "subscriptions/listen params")
        notifications = message.params.get("notifications")
        if isinstance(notifications, Mapping):
            _spelled_exactly(notifications, "taskIds", "subscriptions/listen params.notifications")
        ids = notifications.get("taskIds") if isinstance(notifications, Mapping) else None
        if ids is None:
            return []
        return list(ids) if isinstance(ids, list) else [ids]  # not a list: refused as an unknown id
    return []


class TaskAnswers:
    """Rewrites the task ids in the answers to one request (JSON bodies and SSE events)."""

    def __init__(self, bindings: TaskBindings, principal: Principal, known: Mapping[str, str], *, creates: bool,
                 max_bytes: int = MAX_EVENT_PARSE):
        self._bindings = bindings
        self._principal = principal
        self._known = dict(known)
        self._creates = creates
        self._max_bytes = max_bytes  # R2: the largest event read (upstream.max_list_bytes, as for lists)

    # -- one message ------------------------------------------------------------------------------------

    def _client_id(self, upstream_id: Any, *, creating: bool = False) -> Any:
        """The id the client sees: its own handle, a fresh one for a created task, else the raw value."""
        if not isinstance(upstream_id, str):
            return upstream_id
        if upstream_id in self._known:
            return self._known[upstream_id]
        if creating and self._creates and len(upstream_id.encode()) <= MAX_TASK_ID:
            handle = self._bindings.seal(upstream_id, self._principal)
            self._known[upstream_id] = handle
            return handle
        return upstream_id

    def _related(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.get("_meta")
        related = meta.get(RELATED_TASK) if isinstance(meta, dict) else None
        if isinstance(related, dict) and "taskId" in related:
            return {**obj, "_meta": {**meta, RELATED_TASK: {**related, "taskId": self._client_id(related["taskId"])}}}
        return obj

    def _result(self, result: dict[str, Any]) -> dict[str, Any]:
        if "taskId" in result:
            result = {**result, "taskId": self._client_id(result["taskId"], creating=result.get("resultType") == "task")}
        task = result.get("task")
        if isinstance(task, dict) and "taskId" in task:  # 2025-11-25 CreateTaskResult
            result = {**result, "task": {**task, "taskId": self._client_id(task["taskId"], creating=True)}}
        for key in [key for key in result if fold(key) == "tasks"]:  # 2025-11-25 tasks/list
            items = result[key] if isinstance(result[key], list) else []
            kept = [{**item, "taskId": self._known[item["taskId"]]} for item in items
                    if isinstance(item, dict) and isinstance(item.get("taskId"), str) and item["taskId"] in self._known]
            if len(kept) != len(items):
                log.info("dropped %d task(s) from a task list: the gateway cannot tell whose they are", len(items) - len(kept))
            result = {**result, key: kept}
        return self._related(result)  # last: the id may have been sealed just above

    def message(self, message: Any) -> Any:
        """The message as the client gets it; None when it must not reach the client at all."""
        if not isinstance(message, dict):
            return message
        if isinstance(message.get("result"), dict):
            return {**message, "result": self._result(message["result"])}
        params = message.get("params")
        if not isinstance(params, dict):
            return message
        method = message.get("method")
        if method in TASK_NOTIFICATIONS:
            upstream_id = params.get("taskId")
            if not isinstance(upstream_id, str) or upstream_id not in self._known:
                log.info("dropped a %s for a task this request did not name", method)
                return None
            params = {**params, "taskId": self._known[upstream_id]}
        elif method == ACKNOWLEDGED and isinstance(params.get("notifications"), dict) and "taskIds" in params["notifications"]:
            ids = params["notifications"]["taskIds"]
            kept = [self._known[i] for i in ids if isinstance(i, str) and i in self._known] if isinstance(ids, list) else []
            params = {**params, "notifications": {**params["notifications"], "taskIds": kept}}
        return {**message, "params": self._related(params)}

    def document(self, document: Any) -> Any:
        if isinstance(document, list):
            kept = [m for m in (self.message(item) for item in document) if m is not None]
            return kept if kept else None
        return self.message(document)

    # -- frames -----------------------------------------------------------------------------------------

    def filter_json_body(self, body: bytes) -> bytes:
        if _MAY_MENTION.search(body) is None:
            return body
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise UpstreamError("upstream_unreadable_task", "an answer that may name a task is not JSON") from None
        rewritten = self.document(document)
        if rewritten is None:
            raise UpstreamError("upstream_foreign_task", "an answer held only another caller's task notifications")
        return body if rewritten == document else _dumps(rewritten)

    def filter_event(self, raw: bytes) -> bytes | None:
        if _MAY_MENTION.search(raw) is None:
            return raw
        if len(raw) > self._max_bytes:
            log.error("dropped an upstream event of %d bytes that may name a task: over upstream.max_list_bytes "
                      "(%d), so it was not read (fail closed)", len(raw), self._max_bytes)
            return None
        try:
            event = parse_event(raw)
            if not event.data or not event.data.strip():
                return raw
            document = json.loads(event.data)
        except (ValueError, RecursionError):
            log.warning("dropped an upstream event that may name a task and is not JSON (fail closed)")
            return None
        rewritten = self.document(document)
        if rewritten is None:
            return None
        if rewritten == document:
            return raw
        try:
            return format_event(Event(data=_dumps(rewritten).decode(), event=event.event, id=event.id))
        except UpstreamError:
            log.warning("dropped an upstream event naming a task that cannot be written back (fail closed)")
            return None
