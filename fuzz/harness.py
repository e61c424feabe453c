"""R5: coverage-guided fuzzing (atheris/libFuzzer) of the entry points that read untrusted input.

    python fuzz/harness.py TARGET [libFuzzer options] [CORPUS_DIR ... | CRASH_FILE ...]

Each target turns the fuzzer's bytes into one call of a ``check_*`` function of tests/test_properties.py,
so the fuzzer and the property-based tests prove the same properties: any exception other than the
gateway's own refusal types, and any broken invariant (an ``AssertionError``), is a crash. Only the
``gateway`` package is instrumented for coverage.

Known bugs (``KNOWN_BUGS`` in tests/test_properties.py, each with a strict xfail test) are stepped over so
that a run looks for new ones; ``FUZZ_KNOWN_BUGS=crash`` makes them crash again.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["gateway"]):
    import tests.test_dpop_properties as sender_properties
    import tests.test_properties as properties

logging.disable(logging.CRITICAL)  # the filter's warnings are not findings, and printing them is slow
STEP_OVER_KNOWN = os.environ.get("FUZZ_KNOWN_BUGS", "step-over") != "crash"
_HEADER_NAME = set(properties._TOKEN)


def _header_lines(data: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """``Name: value`` lines are headers, ``?key=value`` lines the query, a ``Content-Type:`` line also the
    content type. Names that are not RFC 9110 tokens are skipped: aiohttp's parser refuses such requests."""
    text = data.decode("utf-8", "surrogateescape")
    headers, query, content_type = [], [], ""
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if line.startswith("?"):
            key, _, value = line[1:].partition("=")
            query.append((key, value))
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _HEADER_NAME or "\x00" in value or "\r" in value:
            continue
        value = value.strip(" \t")
        headers.append((name, value))
        if name.lower() == "content-type":
            content_type = value
    return headers, query, content_type


def bearer(data: bytes) -> None:
    headers, query, content_type = _header_lines(data)
    properties.check_extract_bearer(headers, query, content_type)


def jwt(data: bytes) -> None:
    properties.check_jwt_shape(data.decode("utf-8", "surrogateescape").strip("\n"))


def jsonrpc(data: bytes) -> None:
    # The last byte picks the batch bound, so "batch_too_large" is reached with small inputs too.
    properties.check_parse_body(data, "application/json", 3 if data.endswith(b"\x03") else 50)


def sse(data: bytes) -> None:
    rnd = random.Random(zlib.crc32(data))
    cuts = [rnd.randrange(len(data) + 1) for _ in range(rnd.randrange(7))]
    properties.check_sse_framing(data, cuts)
    if len(data) <= 256:
        properties.check_sse_framing(data, list(range(len(data))))  # one byte at a time


def listing(data: bytes) -> None:
    for strict in (False, True):
        properties.check_list_filter_body(data, strict)
        splitter = properties.EventSplitter()
        for event in splitter.feed(data) + splitter.feed(b"\n\n"):
            properties.check_list_filter_event(event, strict)


def headers(data: bytes) -> None:
    pairs, _, _ = _header_lines(data)
    properties.check_upstream_headers(pairs, "203.0.113.7" if len(data) % 2 else None)


_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
properties.make_config_base(_CONFIG_DIR)


def config(data: bytes) -> None:
    properties.check_load_config(data, _CONFIG_DIR, step_over_known=STEP_OVER_KNOWN)


def dpop(data: bytes) -> None:
    """S1: each line one ``DPoP`` header value (the first the proof); an odd length asks with GET."""
    values = data.decode("utf-8", "surrogateescape").split("\n")[:4]
    sender_properties.check_proof_values(values, "GET" if len(data) % 2 else "POST")


def xfcc(data: bytes) -> None:
    """S3: each line one ``X-Forwarded-Client-Cert`` value, from a trusted peer, for a certificate-bound token."""
    values = [line.removesuffix("\r") for line in data.decode("utf-8", "surrogateescape").split("\n")[:3]]
    sender_properties.check_sender({"x5t#S256": "a" * 43}, "bearer", values, "127.0.0.1")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "bearer": bearer, "jwt": jwt, "jsonrpc": jsonrpc, "sse": sse, "listing": listing, "headers": headers, "config": config,
    "dpop": dpop, "xfcc": xfcc,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs or inputs]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
