"""Fixtures of the proxy's tests: one emulator (moto's server and the proxy) for the whole
session, its rules, counts and learned credentials forgotten before each test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import Emulator


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = Emulator(tmp_path_factory.mktemp("emulator"))
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(autouse=True)
def fresh(emulator: Emulator) -> None:
    emulator.ok("POST", "/reset")


@pytest.fixture(scope="session")
def cognito(emulator: Emulator) -> Any:
    return emulator.cognito()


@pytest.fixture
def pool(emulator: Emulator) -> str:
    """A new identity pool with guest access on and the basic flow off."""
    return emulator.pool()


@pytest.fixture
def identity(cognito: Any, pool: str) -> str:
    """A new guest identity of ``pool``."""
    return cognito.get_id(IdentityPoolId=pool)["IdentityId"]
