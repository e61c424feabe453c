"""P4: ``server.workers`` processes serving one port, sharing nothing but the session key.

The parent loads the configuration and the session key (``server.session_key_file``, or one made now for
this process tree), then forks the workers. Each runs the whole gateway on the same port with
``SO_REUSEPORT``, so the kernel spreads connections across them. Nothing else is shared: session ids
carry their own binding (gateway.mcp.sessions), so a session opened through one worker continues through
any other, and through any replica with the same key. Metrics are the exception, by design: the parent
maps one anonymous shared memory region before the forks, a slot per worker, so that a scrape answered
by any worker shows every worker's counters (O3, gateway.observe.shared).

O1: worker 0 alone serves the admin listener (``server.admin_port``; bound without ``SO_REUSEPORT``, so
there is one owner). Its ``/healthz`` and ``/readyz`` speak for the process tree, since the parent stops
every worker and exits when one dies; with ``admin_port: 0`` every worker answers them on the main port.

The parent passes SIGTERM and SIGINT on to every worker (each drains as one gateway does, E3), and exits
with the first non-zero status a worker exited with, or 0. A worker that dies unexpectedly is not
restarted: the parent stops the others and exits non-zero, so the orchestrator restarts the pod.
"""

from __future__ import annotations

import logging
import os
import signal

from gateway.config import Config
from gateway.mcp.sessions import load_session_key
from gateway.observe.shared import SharedSlots

log = logging.getLogger(__name__)


def _worker(config: Config, key: bytes, metrics: SharedSlots, index: int, *, admin: bool) -> int:
    from gateway.app import run, serve

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # serve() installs its own on its loop
    # On uvloop when installed (P1); the metrics slot is taken here, in the worker (it notes who wrote it last).
    run(serve(config, reuse_port=True, session_key=key, admin=admin, metrics_slot=metrics.slot(index)))
    return 0


def run_workers(config: Config) -> int:
    key = load_session_key(config.server.session_key_file)
    metrics = SharedSlots(config.server.workers)  # O3: mapped before the forks, so every worker shares it
    children: list[int] = []
    for index in range(config.server.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = _worker(config, key, metrics, index, admin=index == 0)  # O1: worker 0 owns the admin listener
            except BaseException:
                logging.getLogger("gateway").exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    log.info("started %d workers on port %d: %s", len(children), config.server.port, ", ".join(map(str, children)))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    remaining = set(children)
    while remaining:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        if pid not in remaining:
            continue
        remaining.discard(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if exit_code != 0:
            status = status or (exit_code if exit_code > 0 else 1)
            if remaining:
                log.error("worker %d exited with %d; stopping the others", pid, exit_code)
                forward(signal.SIGTERM, None)
    return status
