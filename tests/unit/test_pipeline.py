"""The middleware chain: order, validation and security (no database involved)."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import pytest

from healthdb.context import ClinicScope, Role
from healthdb.errors import ClinicContextRequired, InvalidInput
from healthdb.query import middleware
from healthdb.query.options import QueryOptions, TransactionOptions
from healthdb.query.pipeline import Call, CallKind, Handler, chain

SCOPE = ClinicScope(clinic_id=uuid.uuid4(), role=Role.DOCTOR)


async def op(_session: Any) -> str:
    return "ran"


def make_call(
    kind: CallKind = CallKind.READ,
    operation: Any = op,
    options: Any = None,
    scope: ClinicScope | None = SCOPE,
    reason: str | None = None,
) -> Call:
    if options is None:
        options = TransactionOptions() if kind is CallKind.TRANSACTION else QueryOptions()
    return Call(kind=kind, operation=operation, options=options, scope=scope, reason=reason)


async def validation(call: Call, endpoint: Handler) -> Any:
    """The validation half of ``middleware.checked``, in front of ``endpoint``."""
    middleware.validate(call)
    return await endpoint(call)


async def security(call: Call, endpoint: Handler) -> Any:
    """The security half of ``middleware.checked``, in front of ``endpoint``."""
    middleware.secure(call)
    return await endpoint(call)


async def test_checked_runs_both_checks_and_adds_no_frame() -> None:
    endpoint = Endpoint()
    handler = middleware.checked(endpoint)
    pending = handler(make_call())
    assert inspect.iscoroutine(pending)  # the endpoint's own coroutine, not a wrapper's
    assert pending.cr_code is Endpoint.__call__.__code__
    assert await pending == "endpoint"
    with pytest.raises(ClinicContextRequired):
        handler(make_call(options=QueryOptions.for_phi(), scope=None))


class Endpoint:
    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def __call__(self, call: Call) -> str:
        self.calls.append(call)
        return "endpoint"


async def test_chain_runs_outermost_first_and_unwinds_in_reverse() -> None:
    events: list[str] = []

    def recorder(name: str):  # type: ignore[no-untyped-def]
        def wrap(next_: Handler) -> Handler:
            async def step(call: Call) -> Any:
                events.append(f"{name}>")
                result = await next_(call)
                events.append(f"<{name}")
                return f"{name}({result})"

            return step

        return wrap

    async def endpoint(call: Call) -> str:
        events.append("endpoint")
        return "e"

    handler = chain([recorder("a"), recorder("b"), recorder("c")], endpoint)
    assert await handler(make_call()) == "a(b(c(e)))"
    assert events == ["a>", "b>", "c>", "endpoint", "<c", "<b", "<a"]


async def test_chain_with_no_middleware_is_the_endpoint() -> None:
    endpoint = Endpoint()
    assert await chain([], endpoint)(make_call()) == "endpoint"
    assert len(endpoint.calls) == 1


async def test_a_middleware_can_short_circuit() -> None:
    endpoint = Endpoint()

    def refuse(next_: Handler) -> Handler:
        async def step(call: Call) -> Any:
            raise InvalidInput("no")

        return step

    with pytest.raises(InvalidInput):
        await chain([refuse], endpoint)(make_call())
    assert endpoint.calls == []


async def test_validation_passes_a_well_formed_call() -> None:
    endpoint = Endpoint()
    assert await validation(make_call(), endpoint) == "endpoint"
    tx = make_call(CallKind.TRANSACTION)
    assert await validation(tx, endpoint) == "endpoint"


async def test_validation_refuses_a_coroutine_object_and_closes_it() -> None:
    endpoint = Endpoint()
    coroutine = op(None)
    with pytest.raises(InvalidInput, match="not a coroutine"):
        await validation(make_call(operation=coroutine), endpoint)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # no "never awaited"
    assert endpoint.calls == []


@pytest.mark.parametrize("operation", [None, 42, "SELECT 1"])
async def test_validation_refuses_non_callables(operation: object) -> None:
    endpoint = Endpoint()
    with pytest.raises(InvalidInput):
        await validation(make_call(operation=operation), endpoint)
    assert endpoint.calls == []


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        (CallKind.READ, TransactionOptions()),
        (CallKind.WRITE, TransactionOptions()),
        (CallKind.TRANSACTION, QueryOptions()),
        (CallKind.READ, None.__class__),
        (CallKind.READ, {"name": "x"}),
    ],
)
async def test_validation_refuses_the_wrong_options_type(kind: CallKind, options: Any) -> None:
    endpoint = Endpoint()
    call = make_call(kind)
    call.options = options
    with pytest.raises(InvalidInput):
        await validation(call, endpoint)
    assert endpoint.calls == []


@pytest.mark.parametrize("reason", [None, "", "   ", "x" * 501])
async def test_validation_needs_a_bounded_critical_reason(reason: str | None) -> None:
    endpoint = Endpoint()
    call = make_call(CallKind.CRITICAL, options=QueryOptions.for_emergency(), reason=reason)
    with pytest.raises(InvalidInput, match="reason"):
        await validation(call, endpoint)
    assert endpoint.calls == []


async def test_validation_accepts_a_critical_reason_up_to_the_limit() -> None:
    endpoint = Endpoint()
    for reason in ("cardiac arrest, bed 4", "x" * 500):
        call = make_call(CallKind.CRITICAL, options=QueryOptions.for_emergency(), reason=reason)
        assert await validation(call, endpoint) == "endpoint"


async def test_security_requires_a_scope_for_phi() -> None:
    endpoint = Endpoint()
    phi = QueryOptions.for_phi()
    with pytest.raises(ClinicContextRequired):
        await security(make_call(options=phi, scope=None), endpoint)
    with pytest.raises(ClinicContextRequired):
        await security(make_call(CallKind.WRITE, options=phi, scope=None), endpoint)
    assert endpoint.calls == []
    assert await security(make_call(options=phi), endpoint) == "endpoint"


async def test_security_requires_a_scope_for_critical() -> None:
    endpoint = Endpoint()
    critical = make_call(
        CallKind.CRITICAL, options=QueryOptions.for_emergency(), scope=None, reason="r"
    )
    with pytest.raises(ClinicContextRequired):
        await security(critical, endpoint)
    assert endpoint.calls == []
    critical.scope = SCOPE
    assert await security(critical, endpoint) == "endpoint"


async def test_security_lets_non_phi_calls_through_without_a_scope() -> None:
    # The ORM wall, not this step, guards tenant tables for ordinary calls.
    endpoint = Endpoint()
    assert await security(make_call(scope=None), endpoint) == "endpoint"
    tx = make_call(CallKind.TRANSACTION, scope=None)
    assert await security(tx, endpoint) == "endpoint"


def test_call_strategy_labels() -> None:
    assert make_call().strategy == "primary"
    assert make_call(CallKind.WRITE).strategy == "standard"
    assert make_call(CallKind.WRITE, options=QueryOptions().batch()).strategy == "batch"
    critical = make_call(CallKind.CRITICAL, options=QueryOptions.for_emergency())
    assert critical.strategy == "critical"
    assert make_call(CallKind.TRANSACTION, options=TransactionOptions.read_only()).strategy == (
        "read_only"
    )
    assert make_call(CallKind.TRANSACTION, options=TransactionOptions.pessimistic()).strategy == (
        "pessimistic"
    )
    assert make_call(options=QueryOptions().named("x.y")).name == "x.y"
