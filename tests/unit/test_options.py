"""QueryOptions / TransactionOptions: constructors, chaining, immutability, validation."""

from __future__ import annotations

import dataclasses
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthdb.errors import InvalidInput
from healthdb.query import keys
from healthdb.query.keys import CacheKey
from healthdb.query.options import (
    IsolationLevel,
    LockMode,
    QueryOptions,
    ReadStrategy,
    TransactionOptions,
    WriteStrategy,
)

CLINIC = uuid.UUID("00000000-0000-4000-8000-000000000001")
KEY = keys.for_patient(CLINIC, uuid.UUID("00000000-0000-4000-8000-000000000002"))


def test_constructors_set_their_fields() -> None:
    assert QueryOptions.for_read().name == "read"
    assert QueryOptions.for_write().name == "write"
    assert QueryOptions.for_transaction().name == "transaction"
    phi = QueryOptions.for_phi()
    assert phi.phi
    assert not phi.emergency
    emergency = QueryOptions.for_emergency()
    assert emergency.emergency
    assert emergency.write_strategy is WriteStrategy.CRITICAL
    plain = QueryOptions()
    assert plain.read_strategy is ReadStrategy.PRIMARY
    assert plain.cache_key is None
    assert not plain.phi
    assert plain.timeout is None

    assert TransactionOptions.optimistic().lock is LockMode.OPTIMISTIC
    assert TransactionOptions.optimistic(max_retries=0).max_retries == 0
    assert TransactionOptions.pessimistic().lock is LockMode.PESSIMISTIC
    assert TransactionOptions.read_only().is_read_only
    assert TransactionOptions().isolation is None
    level = TransactionOptions.isolation_level("serializable").isolation
    assert level is IsolationLevel.SERIALIZABLE
    assert TransactionOptions.isolation_level("repeatable_read").isolation is (
        IsolationLevel.REPEATABLE_READ
    )


def test_chaining_returns_new_values_and_keeps_earlier_choices() -> None:
    base = QueryOptions.for_read()
    chained = base.cached(KEY, ttl=5).named("patient.get").with_timeout(2.5)
    assert chained is not base
    assert not chained.phi
    assert chained.read_strategy is ReadStrategy.CACHED
    assert chained.cache_key == KEY
    assert chained.cache_ttl == 5
    assert chained.name == "patient.get"
    assert chained.timeout == 2.5
    # The original is untouched.
    assert base.read_strategy is ReadStrategy.PRIMARY
    assert base.cache_key is None
    assert base.name == "read"
    assert base.timeout is None
    assert QueryOptions().on_replica().read_strategy is ReadStrategy.REPLICA
    assert QueryOptions().batch().write_strategy is WriteStrategy.BATCH

    tx = TransactionOptions.optimistic(max_retries=5)
    chained_tx = tx.with_isolation(IsolationLevel.SERIALIZABLE).as_read_only().named("tx.x")
    assert chained_tx.lock is LockMode.OPTIMISTIC
    assert chained_tx.max_retries == 5
    assert chained_tx.isolation is IsolationLevel.SERIALIZABLE
    assert chained_tx.is_read_only
    assert chained_tx.name == "tx.x"
    assert tx.isolation is None
    assert not tx.is_read_only
    assert tx.name == "transaction"


def test_options_are_immutable() -> None:
    options = QueryOptions.for_read()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.phi = True  # type: ignore[misc]
    tx = TransactionOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.max_retries = 100  # type: ignore[misc]
    assert hash(QueryOptions.for_read()) == hash(QueryOptions.for_read())


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "has space", "semi;colon", "dash-name", "quote'", "patiënt", "名前"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        QueryOptions().named(name)
    with pytest.raises(InvalidInput):
        TransactionOptions().named(name)


@pytest.mark.parametrize("name", ["a", "x" * 64, "patient.get_by_id", "A1.b2_c3"])
def test_good_names_are_accepted(name: str) -> None:
    assert QueryOptions().named(name).name == name
    assert TransactionOptions().named(name).name == name


@given(st.text(max_size=80))
def test_accepted_names_are_ascii_identifiers(name: str) -> None:
    """Whatever ``named`` accepts is 1-64 chars of [A-Za-z0-9_.] (safe as a metric label)."""
    try:
        QueryOptions().named(name)
    except InvalidInput:
        return
    assert re.fullmatch(r"[A-Za-z0-9_.]{1,64}", name)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.]{0,63}", fullmatch=True))
def test_identifier_names_are_accepted(name: str) -> None:
    assert QueryOptions().named(name).name == name


def test_cached_needs_a_cache_key() -> None:
    with pytest.raises(InvalidInput):
        QueryOptions().cached("patients:1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        QueryOptions().cached(("k", frozenset()))  # type: ignore[arg-type]
    assert QueryOptions().cached(CacheKey("k", frozenset({"t:*"}))).cache_key is not None


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_non_positive_ttl_is_refused(ttl: float) -> None:
    with pytest.raises(InvalidInput):
        QueryOptions().cached(KEY, ttl=ttl)


@pytest.mark.parametrize("seconds", [0, -3])
def test_non_positive_timeouts_are_refused(seconds: float) -> None:
    with pytest.raises(InvalidInput):
        QueryOptions().with_timeout(seconds)
    with pytest.raises(InvalidInput):
        TransactionOptions().with_timeout(seconds)


@pytest.mark.parametrize("level", ["SNAPSHOT", "read uncommitted", "", "serial", None])
def test_unknown_isolation_level_is_refused(level: str | None) -> None:
    with pytest.raises(InvalidInput):
        TransactionOptions.isolation_level(level)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        TransactionOptions().with_isolation(level)  # type: ignore[arg-type]


@pytest.mark.parametrize("retries", [-1, 21, 1.5, "3"])
def test_bad_max_retries_is_refused(retries: object) -> None:
    with pytest.raises(InvalidInput):
        TransactionOptions.optimistic(max_retries=retries)  # type: ignore[arg-type]


def test_invalid_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="operation name"):
        QueryOptions().named("")


def test_phi_reads_cannot_be_cached() -> None:
    with pytest.raises(InvalidInput, match="never cached"):
        QueryOptions.for_phi().cached(KEY)
