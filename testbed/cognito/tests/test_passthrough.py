"""With no rules the proxy forwards Cognito's calls to moto and counts them."""

from __future__ import annotations

import re
from typing import Any

from support import ACCOUNT, Emulator, expires_in


def test_get_id_is_forwarded_and_counted(emulator: Emulator, cognito: Any, pool: str) -> None:
    identity = cognito.get_id(IdentityPoolId=pool)["IdentityId"]

    assert re.fullmatch(r"us-east-1:[0-9a-f-]{36}", identity)
    calls = emulator.calls()
    assert calls["operations"] == {"GetId": 1}
    assert calls["pools"] == {pool: {"GetId": 1}}
    assert calls["outcomes"] == {"GetId": {"ok": 1}}


def test_get_credentials_for_identity_is_moto_s_and_recorded(
    emulator: Emulator, cognito: Any, pool: str, identity: str
) -> None:
    creds = cognito.get_credentials_for_identity(IdentityId=identity)["Credentials"]

    # moto's fixed key and 90 s lifetime: what the proxy changes only on request.
    assert creds["AccessKeyId"] == "TESTACCESSKEY12345"
    assert 85 <= expires_in(creds["Expiration"]) <= 90
    calls = emulator.calls()
    # Mapped to its pool through the GetId that created the identity.
    assert calls["pools"] == {pool: {"GetId": 1, "GetCredentialsForIdentity": 1}}
    assert calls["identities"] == {identity: {"GetCredentialsForIdentity": 1}}
    assert calls["outcomes"]["GetCredentialsForIdentity"] == {"ok": 1}
    issued = emulator.ok("GET", "/issued")["credentials"]
    assert issued == [{k: creds[k] for k in ("AccessKeyId", "SecretKey", "SessionToken")}]


def test_pool_control_api_reports_roles_and_classic_flow(emulator: Emulator) -> None:
    pool = emulator.pool(name="described", classic=True)

    desc = emulator.ok("GET", f"/pools/{pool}")
    assert desc["IdentityPoolName"] == "described"
    assert desc["AllowUnauthenticatedIdentities"] is True
    assert desc["Roles"] == {"unauthenticated": f"arn:aws:iam::{ACCOUNT}:role/Cognito_describedUnauth_Role"}
    assert desc["AllowClassicFlow"] is True
    updated = emulator.ok("PUT", f"/pools/{pool}", {"guest": False, "classic": False})
    assert updated["AllowUnauthenticatedIdentities"] is False
    assert updated["AllowClassicFlow"] is False
