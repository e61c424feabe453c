"""E4: one structured audit event per decision, as a JSON line on stdout or in ``audit.file``.

Fields: time, request_id, issuer, subject, client_id, method, target (tool, prompt or resource), outcome,
reason, policies (the ids of the policies that decided), policy_version, latency_ms. Never a token: the
target (a resource URI may carry one) is redacted like log fields.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from gateway.config import AuditConfig
from gateway.observe.logs import redact


class AuditLog:
    def __init__(self, config: AuditConfig, stream: IO[str] | None = None):
        self.enabled = config.enabled
        self._stream = stream
        self._path = config.file

    def _out(self) -> IO[str]:
        if self._stream is None:
            self._stream = open(self._path, "a", encoding="utf-8", buffering=1) if self._path else sys.stdout  # noqa: SIM115
        return self._stream

    def record(self, **fields: Any) -> None:
        if not self.enabled:
            return
        now = time.time()
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z", "type": "audit"}
        event.update({k: v for k, v in fields.items() if v is not None})
        if isinstance(event.get("target"), str):
            # The one free-form value a client chooses: a resource URI may carry ?access_token=... (I9).
            event["target"] = redact(event["target"])
        out = self._out()
        out.write(json.dumps(event, default=str) + "\n")
        out.flush()

    def close(self) -> None:
        if self._stream is not None and self._stream not in (sys.stdout, sys.stderr):
            self._stream.close()
