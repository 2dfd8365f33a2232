"""Fault rules: Cognito's JSON errors, STS's XML errors, non-JSON answers, dropped and
reset connections, latency; how rules match, count down and are removed."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support import Emulator, error_of, sts_xml_error

# Cognito's words for the errors a rule names, with their HTTP status.
COGNITO_ERRORS = [
    ("NotAuthorizedException", 400, "Unauthenticated access is not supported for this identity pool."),
    ("ResourceNotFoundException", 400, "IdentityPool not found."),
    ("TooManyRequestsException", 400, "Rate exceeded"),
    (
        "InvalidIdentityPoolConfigurationException",
        400,
        "Invalid identity pool configuration. Check assigned IAM roles for this pool.",
    ),
    ("InternalErrorException", 500, "An internal error occurred."),
    ("LimitExceededException", 400, "Limit exceeded."),
    ("InvalidParameterException", 400, "Invalid parameter."),
]


@pytest.mark.parametrize(("error", "status", "message"), COGNITO_ERRORS)
def test_error_rule_answers_cognitos_json_error(
    emulator: Emulator, pool: str, error: str, status: int, message: str
) -> None:
    emulator.rule(pool=pool, operation="GetId", error=error)

    got, headers, body = emulator.cognito_raw("GetId", {"IdentityPoolId": pool})

    assert got == status
    assert json.loads(body) == {"__type": error, "message": message}
    assert headers["x-amzn-errortype"] == f"{error}:"
    assert headers["content-type"] == "application/x-amz-json-1.1"
    assert emulator.calls()["outcomes"] == {"GetId": {error: 1}}


def test_error_rule_with_message_and_status_as_botocore_sees_it(emulator: Emulator, cognito: Any, pool: str) -> None:
    emulator.rule(pool=pool, error="ResourceNotFoundException", message="IdentityPool 'x' not found.", status=404)

    with pytest.raises(ClientError) as e:
        cognito.get_id(IdentityPoolId=pool)

    assert error_of(e) == (404, "ResourceNotFoundException", "IdentityPool 'x' not found.")


def test_times_limits_a_rule_and_the_listing_counts_its_hits(emulator: Emulator, cognito: Any, pool: str) -> None:
    rule = emulator.rule(pool=pool, operation="GetId", error="InternalErrorException", times=2)

    codes = []
    for _ in range(3):
        try:
            cognito.get_id(IdentityPoolId=pool)
            codes.append("ok")
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])

    assert codes == ["InternalErrorException", "InternalErrorException", "ok"]
    (listed,) = emulator.ok("GET", "/rules")["rules"]
    assert (listed["id"], listed["hits"], listed["remaining"]) == (rule["id"], 2, 0)
    calls = emulator.calls()
    assert calls["operations"] == {"GetId": 3}  # faults are counted too
    assert calls["outcomes"] == {"GetId": {"InternalErrorException": 2, "ok": 1}}


def test_http_status_rule_answers_a_non_json_page(emulator: Emulator, pool: str) -> None:
    emulator.rule(pool=pool, http_status=503)
    emulator.rule(operation="GetCredentialsForIdentity", http_status=502, body="<html>bad gateway</html>")

    status, headers, body = emulator.cognito_raw("GetId", {"IdentityPoolId": pool})
    assert (status, headers["content-type"]) == (503, "text/html")
    assert body == b"<html><body>Service Unavailable</body></html>"
    status, _, body = emulator.cognito_raw("GetCredentialsForIdentity", {"IdentityId": "us-east-1:x"})
    assert (status, body) == (502, b"<html>bad gateway</html>")
    assert emulator.calls()["outcomes"] == {"GetId": {"http503": 1}, "GetCredentialsForIdentity": {"http502": 1}}


def test_connection_reset_rule_resets_the_connection(emulator: Emulator, pool: str) -> None:
    emulator.rule(pool=pool, connection="reset", times=1)

    with pytest.raises(ConnectionResetError):
        emulator.cognito_raw("GetId", {"IdentityPoolId": pool})

    assert emulator.cognito_raw("GetId", {"IdentityPoolId": pool})[0] == 200
    assert emulator.calls()["outcomes"] == {"GetId": {"reset": 1, "ok": 1}}


def test_connection_drop_rule_closes_without_an_answer(emulator: Emulator, pool: str) -> None:
    emulator.rule(pool=pool, connection="drop", times=1)

    with pytest.raises(http.client.RemoteDisconnected):
        emulator.cognito_raw("GetId", {"IdentityPoolId": pool})

    assert emulator.calls()["outcomes"] == {"GetId": {"drop": 1}}


def test_delay_rule_adds_latency_before_the_answer(emulator: Emulator, cognito: Any, pool: str) -> None:
    emulator.rule(pool=pool, operation="GetId", delay_ms=300)

    start = time.monotonic()
    identity = cognito.get_id(IdentityPoolId=pool)["IdentityId"]
    took = time.monotonic() - start

    assert identity.startswith("us-east-1:")
    assert took >= 0.3


def test_rules_match_only_their_pool_and_operation(emulator: Emulator, cognito: Any, pool: str, identity: str) -> None:
    other = emulator.pool()
    emulator.rule(pool=pool, operation="GetId", error="LimitExceededException")

    with pytest.raises(ClientError) as e:
        cognito.get_id(IdentityPoolId=pool)
    assert error_of(e)[1] == "LimitExceededException"
    assert cognito.get_id(IdentityPoolId=other)["IdentityId"].startswith("us-east-1:")
    assert cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]["AccessKeyId"]
    # The identity maps to its pool: a rule on the pool without an operation reaches it.
    emulator.rule(pool=pool, error="NotAuthorizedException")
    with pytest.raises(ClientError) as e:
        cognito.get_credentials_for_identity(IdentityId=identity)
    assert error_of(e)[1] == "NotAuthorizedException"


def test_rule_without_operation_leaves_sts_alone(emulator: Emulator, cognito: Any, pool: str, identity: str) -> None:
    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]
    emulator.rule(error="InternalErrorException")

    assert emulator.sts(creds).get_caller_identity()["Account"]
    with pytest.raises(ClientError) as e:
        cognito.get_id(IdentityPoolId=pool)
    assert error_of(e)[:2] == (500, "InternalErrorException")


@pytest.mark.parametrize(
    ("error", "status", "fault", "message"),
    [
        ("Throttling", 400, "Sender", "Rate exceeded"),
        ("ExpiredToken", 403, "Sender", "The security token included in the request is expired"),
        ("InternalFailure", 500, "Receiver", "An internal error occurred."),
        ("ServiceUnavailable", 503, "Receiver", "Service is unavailable."),
    ],
)
def test_sts_error_rule_answers_stss_xml_error(
    emulator: Emulator, cognito: Any, pool: str, identity: str, error: str, status: int, fault: str, message: str
) -> None:
    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]
    emulator.rule(pool=pool, operation="GetCallerIdentity", error=error, times=1)

    got, raw = emulator.signed_caller_identity(creds)
    assert (got, sts_xml_error(raw)) == (status, (fault, error, message))
    assert emulator.signed_caller_identity(creds)[0] == 200

    assert [c["outcome"] for c in emulator.sts_calls(pool=pool)] == [error, "ok"]


def test_invalid_rules_are_refused(emulator: Emulator) -> None:
    for spec, words in [
        ({"eror": "Throttling"}, "unknown rule keys: ['eror']"),
        ({"error": "NoSuchException"}, "unknown error type 'NoSuchException'"),
        ({"connection": "hang"}, "connection must be 'reset' or 'drop'"),
    ]:
        status, body = emulator.control("POST", "/rules", spec)
        assert status == 400
        assert words in body["error"]
    assert emulator.ok("GET", "/rules") == {"rules": []}


def test_deleting_rules(emulator: Emulator, pool: str) -> None:
    other = emulator.pool()
    one = emulator.rule(pool=pool, delay_ms=1)
    emulator.rule(pool=pool, delay_ms=2)
    kept = emulator.rule(pool=other, delay_ms=3)

    assert emulator.control("DELETE", f"/rules/{one['id']}") == (200, {"deleted": one["id"]})
    assert emulator.control("DELETE", f"/rules/{one['id']}")[0] == 404
    # ?pool= removes that pool's rules and keeps the others.
    assert emulator.ok("DELETE", f"/rules?pool={pool}") == {"rules": 1}
    assert [r["id"] for r in emulator.ok("GET", "/rules")["rules"]] == [kept["id"]]
    assert emulator.ok("DELETE", "/rules") == {"rules": 0}


def test_reset_forgets_rules_counts_and_issued_credentials(emulator: Emulator, cognito: Any, identity: str) -> None:
    emulator.rule(operation="GetId", delay_ms=1)
    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]
    assert emulator.calls()["operations"]

    emulator.ok("POST", "/reset")

    assert emulator.ok("GET", "/rules") == {"rules": []}
    assert emulator.calls() == {"operations": {}, "pools": {}, "identities": {}, "outcomes": {}}
    assert emulator.ok("GET", "/issued") == {"credentials": [], "open_id_tokens": []}
    with pytest.raises(ClientError) as e:
        emulator.sts(creds).get_caller_identity()
    assert error_of(e)[1] == "InvalidClientTokenId"
