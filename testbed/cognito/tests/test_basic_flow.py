"""Cognito's basic (classic) flow: GetOpenIdToken's tokens, and STS
AssumeRoleWithWebIdentity checking the token, the role's trust and DurationSeconds."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from support import ACCOUNT, Emulator, error_of, expires_in, jwt_claims

ROLE = f"arn:aws:iam::{ACCOUNT}:role/basic-reader"


@pytest.fixture
def classic_pool(emulator: Emulator) -> str:
    return emulator.pool(classic=True)


@pytest.fixture
def token(cognito: Any, classic_pool: str) -> str:
    identity = cognito.get_id(IdentityPoolId=classic_pool)["IdentityId"]
    return cognito.get_open_id_token(IdentityId=identity)["Token"]


def assume(emulator: Emulator, token: str, role: str = ROLE, session: str = "app", **more: Any) -> dict[str, Any]:
    return emulator.sts().assume_role_with_web_identity(
        RoleArn=role, RoleSessionName=session, WebIdentityToken=token, **more
    )


def test_get_open_id_token_hands_out_a_cognito_shaped_token(
    emulator: Emulator, cognito: Any, classic_pool: str
) -> None:
    identity = cognito.get_id(IdentityPoolId=classic_pool)["IdentityId"]

    answer = cognito.get_open_id_token(IdentityId=identity)

    assert answer["IdentityId"] == identity
    claims = jwt_claims(answer["Token"])
    assert claims["sub"] == identity
    assert claims["aud"] == classic_pool
    assert claims["amr"] == ["unauthenticated"]
    assert claims["iss"] == "https://cognito-identity.amazonaws.com"
    assert claims["exp"] - claims["iat"] == 600
    assert emulator.ok("GET", "/issued")["open_id_tokens"] == [answer["Token"]]
    assert emulator.calls()["pools"][classic_pool] == {"GetId": 1, "GetOpenIdToken": 1}


def test_assume_role_with_web_identity_for_the_requested_duration(
    emulator: Emulator, classic_pool: str, token: str
) -> None:
    emulator.ok("POST", "/roles", {"arn": ROLE, "trusted_pools": [classic_pool], "max_session_seconds": 7200})

    answer = assume(emulator, token, DurationSeconds=7200)

    creds = answer["Credentials"]
    assert 7195 <= expires_in(creds["Expiration"]) <= 7200
    assert answer["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/basic-reader/app"
    assert answer["Audience"] == classic_pool
    assert answer["Provider"] == "cognito-identity.amazonaws.com"
    # STS accepts them as that session of the role.
    me = emulator.sts({**creds, "SecretKey": creds["SecretAccessKey"]}).get_caller_identity()
    assert me["Arn"] == answer["AssumedRoleUser"]["Arn"]
    web, caller = emulator.sts_calls(pool=classic_pool)
    assert (web["action"], web["class"], web["outcome"], web["duration_seconds"]) == (
        "AssumeRoleWithWebIdentity",
        "token",
        "ok",
        "7200",
    )
    assert (caller["class"], caller["access_key_id"]) == ("current", creds["AccessKeyId"])


def test_the_pools_own_unauth_role_trusts_it_for_an_hour_by_default(
    emulator: Emulator, classic_pool: str, token: str
) -> None:
    role = emulator.ok("GET", f"/pools/{classic_pool}")["Roles"]["unauthenticated"]

    creds = assume(emulator, token, role=role)["Credentials"]

    assert 3595 <= expires_in(creds["Expiration"]) <= 3600


def test_duration_above_the_roles_maximum_is_a_validation_error(
    emulator: Emulator, classic_pool: str, token: str
) -> None:
    emulator.ok("POST", "/roles", {"arn": ROLE, "trusted_pools": [classic_pool]})

    with pytest.raises(ClientError) as e:
        assume(emulator, token, DurationSeconds=7200)

    assert error_of(e) == (
        400,
        "ValidationError",
        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
    )


def test_role_that_does_not_trust_the_pool_is_access_denied(emulator: Emulator, token: str) -> None:
    emulator.ok("POST", "/roles", {"arn": ROLE, "trusted_pools": [emulator.pool(classic=True)]})

    with pytest.raises(ClientError) as e:
        assume(emulator, token)

    assert error_of(e) == (403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")


def test_role_requiring_authenticated_identities_is_access_denied(
    emulator: Emulator, classic_pool: str, token: str
) -> None:
    emulator.ok("POST", "/roles", {"arn": ROLE, "trusted_pools": [classic_pool], "amr": "authenticated"})

    with pytest.raises(ClientError) as e:
        assume(emulator, token)

    assert error_of(e)[:2] == (403, "AccessDenied")


def test_token_never_handed_out_is_invalid_identity_token(emulator: Emulator, classic_pool: str) -> None:
    emulator.ok("POST", "/roles", {"arn": ROLE, "trusted_pools": [classic_pool]})

    with pytest.raises(ClientError) as e:
        assume(emulator, "a.b.c")

    status, code, message = error_of(e)
    assert (status, code) == (400, "InvalidIdentityToken")
    assert message.startswith("Couldn't retrieve verification key from your identity provider")
    assert emulator.sts_calls()[0]["class"] == "unknown_token"


@pytest.mark.parametrize(
    ("session", "duration", "words"),
    [
        ("a", 3600, "Value 'a' at 'roleSessionName' failed to satisfy constraint"),
        ("has space", 3600, "Value 'has space' at 'roleSessionName' failed to satisfy constraint"),
        ("app", 899, "Member must have value greater than or equal to 900"),
        ("app", 43201, "Member must have value less than or equal to 43200"),
    ],
)
def test_bad_parameters_are_validation_errors(
    emulator: Emulator, classic_pool: str, token: str, session: str, duration: int, words: str
) -> None:
    emulator.ok("POST", "/roles", {"arn": ROLE, "trusted_pools": [classic_pool]})

    status, _, body = emulator.raw(
        "POST",
        "/",
        (
            f"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={ROLE}&RoleSessionName={session}"
            f"&WebIdentityToken={token}&DurationSeconds={duration}"
        ).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert status == 400
    assert b"<Code>ValidationError</Code>" in body
    assert words.encode() in body


def test_lifetime_and_fault_rules_apply_to_assume_role_with_web_identity(
    emulator: Emulator, classic_pool: str, token: str
) -> None:
    emulator.ok("POST", "/roles", {"arn": ROLE, "trusted_pools": [classic_pool]})
    emulator.rule(pool=classic_pool, operation="AssumeRoleWithWebIdentity", error="Throttling", times=1)
    emulator.rule(pool=classic_pool, operation="AssumeRoleWithWebIdentity", lifetime_seconds=1000)

    with pytest.raises(ClientError) as e:
        assume(emulator, token)
    assert error_of(e) == (400, "Throttling", "Rate exceeded")
    creds = assume(emulator, token, DurationSeconds=3600)["Credentials"]

    assert 995 <= expires_in(creds["Expiration"]) <= 1000
    assert [c["outcome"] for c in emulator.sts_calls()] == ["Throttling", "ok"]
