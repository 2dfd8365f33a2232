"""STS GetCallerIdentity on the proxy: the credentials it handed out, checked (key,
session token, expiry, SigV4 signature) and answered like STS."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from support import ACCOUNT, Emulator, error_of, sts_xml_error

SIGNATURE_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)


@pytest.fixture
def creds(emulator: Emulator, cognito: Any, pool: str, identity: str) -> dict[str, Any]:
    """Credentials unique to ``identity`` (as Cognito's are), an hour long."""
    emulator.rule(pool=pool, unique_credentials=True, lifetime_seconds=3600)
    return cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]


def test_valid_signature_is_accepted_as_the_pools_unauth_role(
    emulator: Emulator, pool: str, identity: str, creds: dict[str, Any]
) -> None:
    name = emulator.ok("GET", f"/pools/{pool}")["IdentityPoolName"]

    me = emulator.sts(creds).get_caller_identity()

    assert me["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/Cognito_{name}Unauth_Role/CognitoIdentityCredentials"
    assert me["Account"] == ACCOUNT
    assert me["UserId"].startswith("AROA") and me["UserId"].endswith(":CognitoIdentityCredentials")
    (call,) = emulator.sts_calls(pool=pool)
    assert (call["class"], call["outcome"], call["identity_id"]) == ("current", "ok", identity)
    assert call["access_key_id"] == creds["AccessKeyId"]
    assert emulator.calls()["outcomes"]["GetCallerIdentity"] == {"ok": 1}


def test_custom_role_arn_is_the_role_sts_reports(emulator: Emulator, cognito: Any, pool: str, identity: str) -> None:
    emulator.rule(pool=pool, unique_credentials=True)
    role = f"arn:aws:iam::{ACCOUNT}:role/reader"
    creds = cognito.get_credentials_for_identity(IdentityId=identity, CustomRoleArn=role)["Credentials"]

    me = emulator.sts(creds).get_caller_identity()

    assert me["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/reader/CognitoIdentityCredentials"


def test_botocore_signed_request_passes_and_a_body_changed_after_signing_does_not(
    emulator: Emulator, creds: dict[str, Any]
) -> None:
    status, _ = emulator.signed_caller_identity(creds)
    assert status == 200

    status, raw = emulator.signed_caller_identity(creds, body=b"Action=GetCallerIdentity&Version=2011-06-16")

    assert status == 403
    assert sts_xml_error(raw) == ("Sender", "SignatureDoesNotMatch", SIGNATURE_MESSAGE)
    assert [c["class"] for c in emulator.sts_calls()] == ["current", "bad_signature"]


def test_wrong_secret_is_signature_does_not_match(emulator: Emulator, creds: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as e:
        emulator.sts({**creds, "SecretKey": "x" * 40}).get_caller_identity()

    assert error_of(e) == (403, "SignatureDoesNotMatch", SIGNATURE_MESSAGE)
    (call,) = emulator.sts_calls()
    assert (call["class"], call["outcome"]) == ("bad_signature", "SignatureDoesNotMatch")


def test_unsigned_call_is_missing_authentication_token(emulator: Emulator) -> None:
    with pytest.raises(ClientError) as e:
        emulator.sts().get_caller_identity()

    assert error_of(e) == (403, "MissingAuthenticationToken", "Request is missing Authentication Token")
    (call,) = emulator.sts_calls()
    assert (call["class"], call["access_key_id"], call["outcome"]) == ("unknown", None, "MissingAuthenticationToken")


def test_key_never_handed_out_is_invalid_client_token_id(emulator: Emulator) -> None:
    stranger = {"AccessKeyId": "ASIANEVERHANDEDOUT01", "SecretKey": "s" * 40, "SessionToken": "t"}

    with pytest.raises(ClientError) as e:
        emulator.sts(stranger).get_caller_identity()

    assert error_of(e) == (403, "InvalidClientTokenId", "The security token included in the request is invalid.")
    assert emulator.sts_calls()[0]["class"] == "unknown"


def test_session_token_not_issued_with_the_key_is_invalid_client_token_id(
    emulator: Emulator, creds: dict[str, Any]
) -> None:
    with pytest.raises(ClientError) as e:
        emulator.sts({**creds, "SessionToken": "not-the-one"}).get_caller_identity()

    assert error_of(e)[:2] == (403, "InvalidClientTokenId")
    assert emulator.sts_calls()[0]["class"] == "bad_token"


def test_expired_credentials_are_expired_token(emulator: Emulator, cognito: Any, pool: str, identity: str) -> None:
    emulator.rule(pool=pool, unique_credentials=True, lifetime_seconds=0)
    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]

    with pytest.raises(ClientError) as e:
        emulator.sts(creds).get_caller_identity()

    assert error_of(e) == (403, "ExpiredToken", "The security token included in the request is expired")
    assert emulator.sts_calls()[0]["class"] == "expired"


def test_older_key_of_an_identity_is_previous_until_it_expires(
    emulator: Emulator, cognito: Any, identity: str, creds: dict[str, Any]
) -> None:
    newer = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]
    assert newer["AccessKeyId"] != creds["AccessKeyId"]

    emulator.sts(creds).get_caller_identity()
    emulator.sts(newer).get_caller_identity()

    calls = emulator.sts_calls(identity_id=identity)
    assert [(c["access_key_id"], c["class"]) for c in calls] == [
        (creds["AccessKeyId"], "previous"),
        (newer["AccessKeyId"], "current"),
    ]


def test_other_sts_actions_are_invalid_action(emulator: Emulator, creds: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as e:
        emulator.sts(creds).get_session_token()

    status, code, message = error_of(e)
    assert (status, code) == (400, "InvalidAction")
    assert "GetSessionToken" in message
    assert emulator.calls()["outcomes"]["GetSessionToken"] == {"InvalidAction": 1}


def test_sts_calls_can_be_forgotten_by_filter(emulator: Emulator, creds: dict[str, Any]) -> None:
    emulator.sts(creds).get_caller_identity()
    with pytest.raises(ClientError):
        emulator.sts().get_caller_identity()

    assert emulator.ok("DELETE", f"/sts-calls?access_key_id={creds['AccessKeyId']}") == {"deleted": 1}

    assert [c["class"] for c in emulator.sts_calls()] == ["unknown"]
    # The issued credentials stay known.
    assert emulator.sts(creds).get_caller_identity()["Account"] == ACCOUNT
