"""R2 (issue 11, the soak's RSS growth): the decision caches are bounded in bytes and hold one policy version.

Before: the decision cache was 50,000 entries of ~0.8 KiB (about 40 MiB), the listing cache 100,000, and a
policy reload left the old version's entries in both until they expired five minutes later, which the
soak saw as RSS growth. These tests use the real ``Authorizer`` and Cedar; memory is measured with
tracemalloc, so the per-entry constants the byte accounting uses are checked against what Python holds.
"""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from gateway.auth.principal import principal_from_claims
from gateway.authz.cedar import (
    DECISION_BUDGET_BYTES,
    DECISION_ENTRY_BYTES,
    LISTING_BUDGET_BYTES,
    Authorizer,
    PolicyStore,
)
from gateway.config import AuthorizationConfig
from gateway.memo import ByteBudgetCache
from gateway.mcp.jsonrpc import parse_body
from gateway.mcp.listing import ListFilter

POLICIES = """\
@id("everyone-may-list") permit (principal, action == Action::"tools/list", resource);
@id("everyone-may-call-tools") permit (principal, action == Action::"tools/call", resource);
@id("tool_13-is-forbidden") forbid (principal, action == Action::"tools/call", resource == Tool::"tool_13");
"""
EDITED = POLICIES + '@id("tool_42") forbid (principal, action == Action::"tools/call", resource == Tool::"tool_42");\n'


def authorizer_for(tmp_path: Path, **budgets: int) -> tuple[Authorizer, PolicyStore, Path]:
    policy_file = tmp_path / "main.cedar"
    policy_file.write_text(POLICIES)
    config = AuthorizationConfig(policies=tmp_path)
    store = PolicyStore(config)
    return Authorizer(store, config, server_name="mcp", **budgets), store, policy_file


def principal(n: int):
    return principal_from_claims({"sub": f"user-{n}", "iss": "https://idp.example", "exp": 2e9, "jti": f"jti-{n}",
                                  "scope": "mcp", "client_id": "c"}, token_type="jwt")


def call(tool: str, arguments: dict) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
    return parse_body(body.encode(), "application/json", max_batch=50).messages[0]


def test_r2_decision_cache_stays_within_its_byte_budget_whatever_the_arguments(tmp_path):
    budget = 256 * 1024
    authorizer, _, _ = authorizer_for(tmp_path, decision_budget_bytes=budget)
    caller = principal(1)
    for n in range(1500):
        # Client-chosen sizes: short, near the 128-character cut, and far over it (hashed into the key).
        arguments = {"text": "x" * (n % 7 * 40), "n": n} if n % 3 else {"blob": "y" * 20_000, "n": n}
        decision = authorizer.decide_all(caller, [call(f"tool_{n % 20}", arguments)])[0]
        assert decision.allowed == (n % 20 != 13)
    cache = authorizer._decisions
    assert cache.currsize <= cache.maxsize == budget
    assert 0 < len(cache) <= budget // DECISION_ENTRY_BYTES
    assert DECISION_BUDGET_BYTES <= 8 * 1024 * 1024  # the documented default (docs/configuration.md)


def test_r2_a_decision_entry_costs_no_more_than_it_is_counted(tmp_path):
    """The byte accounting is an upper bound of what Python holds for a decision entry, for the largest key a
    client can make (128 characters of request before it is hashed)."""
    authorizer, _, _ = authorizer_for(tmp_path)
    caller = principal(2)
    messages = [call(f"tool_{n % 20}", {"t": f"{n:06d}" + "z" * 90}) for n in range(2000)]
    authorizer.decide_all(caller, messages[:1])  # principal digest, shared decision, caches made
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for message in messages[1:]:
            authorizer.decide_all(caller, [message])
        del messages
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    entries = len(authorizer._decisions) - 1  # the first message's entry was there before
    assert entries == 1999
    assert held / entries <= DECISION_ENTRY_BYTES, f"{held / entries:.0f} bytes per entry held, {DECISION_ENTRY_BYTES} counted"
    assert authorizer._decisions.currsize >= held


def test_r2_listing_decisions_count_the_upstreams_item_names(tmp_path):
    """Tool names are the upstream's and can be long: the listing cache counts them and stays in budget."""
    budget = 128 * 1024
    authorizer, _, _ = authorizer_for(tmp_path, listing_budget_bytes=budget)
    # The per-item check keeps each item under its name.
    names = [f"tool_{n}_" + "n" * 2000 for n in range(200)]
    check = authorizer.item_check(principal(3))
    for name in names:
        assert check("tools/list", name)
    cache = authorizer._list_cache
    assert cache.currsize <= cache.maxsize == budget
    assert len(cache) <= budget // 2000
    assert LISTING_BUDGET_BYTES <= 4 * 1024 * 1024


def test_r2_a_policy_reload_drops_every_decision_of_the_old_version(tmp_path):
    authorizer, store, policy_file = authorizer_for(tmp_path)
    callers = [principal(n) for n in range(4)]
    tools = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": f"tool_{n}"} for n in range(50)]}}
    raw = json.dumps(tools).encode()
    for caller in callers:
        authorizer.decide_all(caller, [call(f"tool_{n}", {}) for n in range(50)])
        ListFilter(lambda scope, c=caller: authorizer.item_check(c, scope), strict=True,
                   scope=lambda c=caller: authorizer.listing_scope(c), memo=authorizer.filtered_lists).filter_json_body(raw)
    assert len(authorizer._decisions) >= 200 and len(authorizer._list_cache) > 0 and len(authorizer.filtered_lists) == 4

    policy_file.write_text(EDITED)
    os.utime(policy_file, ns=(1, 1))  # a change the fingerprint sees, however fast the test runs
    assert store.reload_if_changed()
    assert (len(authorizer._decisions), len(authorizer._list_cache), len(authorizer.filtered_lists)) == (0, 0, 0)
    assert authorizer._decisions.currsize == authorizer._list_cache.currsize == authorizer.filtered_lists.currsize == 0
    # The new version decides afresh, and only its decisions are kept.
    assert not authorizer.decide_all(callers[0], [call("tool_42", {})])[0].allowed
    assert authorizer.decide_all(callers[0], [call("tool_41", {})])[0].policy_version == store.current.version
    assert len(authorizer._decisions) == 2


def test_r2_equal_decisions_share_one_object(tmp_path):
    authorizer, _, _ = authorizer_for(tmp_path)
    decisions = [authorizer.decide_all(principal(n), [call("tool_1", {"n": n})])[0] for n in range(50)]
    assert len({id(decision) for decision in decisions}) == 1


# -- the cache itself ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sized(key: str, value: bytes) -> int:
    return 10 + len(value)


def test_r2_byte_budget_cache_evicts_the_oldest_to_stay_in_budget():
    cache: ByteBudgetCache[str, bytes] = ByteBudgetCache(100, sizeof=sized, entry_max_bytes=60, timer=Clock())
    for n in range(10):
        cache[f"k{n}"] = b"v" * 20  # 30 bytes each
    assert cache.currsize <= 100 and list(cache) == ["k7", "k8", "k9"]
    cache["k8"] = b"w" * 5  # stored again: counted anew, moved to the end
    assert cache.currsize == 30 + 15 + 30 and list(cache) == ["k7", "k9", "k8"]
    cache["k9"] = b"x" * 80  # over the entry cap: not stored, and the older value under that key goes
    assert "k9" not in cache and cache.currsize == 45
    assert cache.get("absent", "default") == "default"
    with pytest.raises(KeyError):
        cache["absent"]


def test_r2_byte_budget_cache_entries_expire():
    clock = Clock()
    cache: ByteBudgetCache[str, bytes] = ByteBudgetCache(1000, sizeof=sized, ttl=10, timer=clock)
    cache["a"] = b"1"
    clock.now = 5
    cache["b"] = b"2"
    clock.now = 10
    assert "a" not in cache and cache["b"] == b"2"
    assert cache.currsize == 11
    clock.now = 15
    assert len(cache) == 0 and cache.currsize == 0


def test_r2_a_principals_digest_goes_with_the_principal(tmp_path):
    """The digest map held every principal it had seen (up to 10,000, each with its claims) after the token
    caches had let it go: fresh tokens made it grow for the whole soak."""
    authorizer, _, _ = authorizer_for(tmp_path)
    callers = [principal(n) for n in range(100)]
    for caller in callers:
        authorizer.decide_all(caller, [call("tool_1", {})])
    assert len(authorizer._principal_digests) == 100
    kept = callers[:10]
    del callers, caller
    gc.collect()
    assert len(authorizer._principal_digests) == 10
    assert all(authorizer._principal_digest(p) == authorizer._principal_digests[id(p)][1] for p in kept)
