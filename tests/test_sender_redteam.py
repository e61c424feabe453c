"""S1-S3, A6, O2 under attack: what a fresh red-team pass found, each against a real ``serve`` process.

Every test here is a regression test for one finding (the commit that fixed it says what the attack was).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.dpop_proofs import DpopKey
from tests.factories import RESOURCE
from tests.test_dpop import INIT


async def post(gateway, headers: Any, body: Any = INIT) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/mcp", json=body, headers=headers) as response:
            return response.status, response.headers, await response.text()


def reasons(gateway) -> list[str]:
    return [record["reason"] for record in gateway.log_records() if "reason" in record]


@pytest.fixture
def bound(issuer):
    key = DpopKey.ec()
    return key, issuer.mint(cnf={"jkt": key.jkt})


async def test_S1_proof_iat_beyond_the_float_range_is_a_401_not_a_500(serve_gateway, upstream, bound):
    """math.isfinite(10**400) raises OverflowError: the proof's iat made the gateway answer 500 with a traceback."""
    key, token = bound
    gateway = await serve_gateway(upstream.url)
    for iat in (10**400, -(10**400), 2**53):
        status, _, body = await post(gateway, {"Authorization": f"DPoP {token}", "DPoP": key.proof(RESOURCE, token, iat=iat)})
        assert status == 401, body
    assert reasons(gateway).count("dpop_claim_malformed") == 3
    assert "Traceback" not in gateway.log_text()
    assert not upstream.received
