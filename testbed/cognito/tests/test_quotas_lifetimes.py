"""Request-rate quotas (token buckets: TooManyRequestsException, STS's Throttling) and
the credentials' uniqueness and lifetime."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support import Emulator, error_of, expires_in, sts_xml_error


def outcomes_of(calls: list[Any]) -> list[str]:
    """Each call's outcome: "ok" or the error code it raised."""
    out = []
    for call in calls:
        try:
            call()
            out.append("ok")
        except ClientError as e:
            out.append(e.response["Error"]["Code"])
    return out


def test_rate_rule_throttles_get_id_past_its_burst(emulator: Emulator, cognito: Any, pool: str) -> None:
    emulator.rule(operation="GetId", rate_per_second=0.1, burst=2)

    got = outcomes_of([lambda: cognito.get_id(IdentityPoolId=pool)] * 3)

    assert got == ["ok", "ok", "TooManyRequestsException"]
    with pytest.raises(ClientError) as e:
        cognito.get_id(IdentityPoolId=pool)
    assert error_of(e) == (400, "TooManyRequestsException", "Rate exceeded")
    assert emulator.calls()["outcomes"] == {"GetId": {"ok": 2, "TooManyRequestsException": 2}}
    assert emulator.ok("GET", "/rules")["rules"][0]["hits"] == 4


def test_rate_rule_refills_at_its_rate(emulator: Emulator, cognito: Any, pool: str) -> None:
    emulator.rule(pool=pool, operation="GetId", rate_per_second=5, burst=1)
    assert outcomes_of([lambda: cognito.get_id(IdentityPoolId=pool)] * 2) == ["ok", "TooManyRequestsException"]

    # One token comes back within 1/5 s: poll until it has, for at most a second.
    start = time.monotonic()
    deadline = start + 1.0
    while outcomes_of([lambda: cognito.get_id(IdentityPoolId=pool)]) != ["ok"]:
        assert time.monotonic() < deadline, "the bucket did not refill"
        time.sleep(0.02)
    # Another pool is not throttled by it.
    assert outcomes_of([lambda: cognito.get_id(IdentityPoolId=emulator.pool())] * 3) == ["ok"] * 3


def test_rate_rule_on_sts_answers_throttling(emulator: Emulator, cognito: Any, pool: str, identity: str) -> None:
    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]
    emulator.rule(operation="GetCallerIdentity", rate_per_second=0.1, burst=1)

    assert emulator.signed_caller_identity(creds)[0] == 200
    status, raw = emulator.signed_caller_identity(creds)

    assert (status, sts_xml_error(raw)) == (400, ("Sender", "Throttling", "Rate exceeded"))
    assert [c["outcome"] for c in emulator.sts_calls()] == ["ok", "Throttling"]
    assert emulator.calls()["outcomes"]["GetCallerIdentity"] == {"ok": 1, "Throttling": 1}


def test_unique_credentials_rule_hands_out_fresh_keys(emulator: Emulator, cognito: Any, pool: str) -> None:
    first, second = (cognito.get_id(IdentityPoolId=pool)["IdentityId"] for _ in range(2))
    moto_keys = {
        cognito.get_credentials_for_identity(IdentityId=i)["Credentials"]["AccessKeyId"] for i in (first, second)
    }
    assert moto_keys == {"TESTACCESSKEY12345"}  # moto: one key for everyone

    emulator.rule(pool=pool, unique_credentials=True)
    got = [cognito.get_credentials_for_identity(IdentityId=i)["Credentials"] for i in (first, first, second)]

    assert len({c["AccessKeyId"] for c in got}) == 3
    assert len({c["SecretKey"] for c in got}) == 3
    assert len({c["SessionToken"] for c in got}) == 3
    assert all(c["AccessKeyId"].startswith("ASIA") and len(c["AccessKeyId"]) == 20 for c in got)
    assert all(len(c["SecretKey"]) == 40 for c in got)


@pytest.mark.parametrize("lifetime", [900, 3600, 43200])
def test_lifetime_rule_sets_the_expiration(
    emulator: Emulator, cognito: Any, pool: str, identity: str, lifetime: int
) -> None:
    emulator.rule(pool=pool, operation="GetCredentialsForIdentity", lifetime_seconds=lifetime)

    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]

    assert lifetime - 5 <= expires_in(creds["Expiration"]) <= lifetime


def test_the_last_matching_lifetime_wins(emulator: Emulator, cognito: Any, pool: str, identity: str) -> None:
    emulator.rule(lifetime_seconds=600)
    emulator.rule(pool=pool, lifetime_seconds=1200)

    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]

    assert 1195 <= expires_in(creds["Expiration"]) <= 1200
