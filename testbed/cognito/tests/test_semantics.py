"""``semantics`` rules: what Cognito refuses and moto lets through, in Cognito's words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support import Emulator, error_of


def test_unknown_pool_is_resource_not_found(emulator: Emulator, cognito: Any) -> None:
    missing = "us-east-1:00000000-0000-0000-0000-000000000000"
    emulator.rule(semantics=True)

    with pytest.raises(ClientError) as e:
        cognito.get_id(IdentityPoolId=missing)

    assert error_of(e) == (400, "ResourceNotFoundException", f"IdentityPool '{missing}' not found.")
    assert emulator.calls()["outcomes"] == {"GetId": {"ResourceNotFoundException": 1}}


def test_deleted_pool_is_resource_not_found_for_its_identities(
    emulator: Emulator, cognito: Any, pool: str, identity: str
) -> None:
    emulator.rule(pool=pool, semantics=True)
    emulator.ok("DELETE", f"/pools/{pool}")

    with pytest.raises(ClientError) as e:
        cognito.get_credentials_for_identity(IdentityId=identity)

    assert error_of(e) == (400, "ResourceNotFoundException", f"Identity '{identity}' not found.")


@pytest.mark.parametrize(
    ("off", "on", "call", "code", "message"),
    [
        (
            {"guest": False},
            {"guest": True},
            lambda cognito, pool, _: cognito.get_id(IdentityPoolId=pool),
            "NotAuthorizedException",
            "Unauthenticated access is not supported for this identity pool.",
        ),
        (
            {"classic": False},
            {"classic": True},
            lambda cognito, _, identity: cognito.get_open_id_token(IdentityId=identity),
            "InvalidParameterException",
            "Basic (classic) flow is not enabled, please use enhanced flow.",
        ),
    ],
    ids=["guest access off", "basic flow off"],
)
def test_pool_setting_off_is_refused_until_turned_on(
    emulator: Emulator,
    cognito: Any,
    off: dict[str, bool],
    on: dict[str, bool],
    call: Callable[[Any, str, str], Any],
    code: str,
    message: str,
) -> None:
    pool = emulator.pool(**off)
    identity = cognito.get_id(IdentityPoolId=pool)["IdentityId"]
    # moto ignores the setting: without the rule the call goes through.
    assert call(cognito, pool, identity)["IdentityId"]
    emulator.rule(pool=pool, semantics=True)

    with pytest.raises(ClientError) as e:
        call(cognito, pool, identity)

    assert error_of(e) == (400, code, message)
    emulator.ok("PUT", f"/pools/{pool}", on)
    assert call(cognito, pool, identity)["IdentityId"].startswith("us-east-1:")


def test_forgotten_identity_is_resource_not_found(emulator: Emulator, cognito: Any, pool: str, identity: str) -> None:
    emulator.rule(pool=pool, semantics=True)
    assert emulator.ok("DELETE", f"/identities/{identity}") == {"deleted": identity}

    for call in (cognito.get_credentials_for_identity, cognito.get_open_id_token):
        with pytest.raises(ClientError) as e:
            call(IdentityId=identity)
        assert error_of(e) == (400, "ResourceNotFoundException", f"Identity '{identity}' not found.")
