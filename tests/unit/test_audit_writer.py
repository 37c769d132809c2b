"""The group-commit writer (``healthdb.internal.audit.writer``) with a fake flush: rows of
concurrent readers are written together, in order, per clinic; a failed flush refuses
exactly its own readers; nothing waits forever."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from healthdb.errors import AuditWriteFailed
from healthdb.internal.audit.writer import AuditWriter

A, B = uuid.uuid4(), uuid.uuid4()


def rows(clinic: uuid.UUID, *names: str) -> list[dict[str, Any]]:
    return [{"clinic_id": clinic, "action": name} for name in names]


class Flushes:
    """Records each flush; ``gate`` holds a flush until released; ``fail`` names clinics
    whose flushes raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[uuid.UUID, list[str]]] = []
        self.gate: asyncio.Event | None = None
        self.fail: set[uuid.UUID] = set()

    async def __call__(self, clinic: uuid.UUID, batch: list[dict[str, Any]]) -> None:
        self.calls.append((clinic, [r["action"] for r in batch]))
        if self.gate is not None:
            await self.gate.wait()
        if clinic in self.fail:
            raise ConnectionError("database gone")


async def test_rows_that_arrive_during_a_flush_share_the_next_one() -> None:
    flushes = Flushes()
    flushes.gate = asyncio.Event()
    writer = AuditWriter(flush=flushes)
    first = asyncio.create_task(writer.write(rows(A, "a1")))
    await asyncio.sleep(0)  # the first flush starts and waits at the gate
    later = [asyncio.create_task(writer.write(rows(A, f"a{n}"))) for n in range(2, 6)]
    await asyncio.sleep(0)
    assert not first.done()
    flushes.gate.set()
    await asyncio.gather(first, *later)
    assert flushes.calls == [(A, ["a1"]), (A, ["a2", "a3", "a4", "a5"])]
    assert (writer.flushes, writer.rows) == (2, 5)


async def test_each_clinic_gets_its_own_flush_and_failures_stay_there() -> None:
    flushes = Flushes()
    flushes.fail = {B}
    writer = AuditWriter(flush=flushes)
    outcomes = await asyncio.gather(
        writer.write(rows(A, "a1", "a2")),
        writer.write(rows(B, "b1")),
        writer.write(rows(A, "a3")),
        return_exceptions=True,
    )
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], AuditWriteFailed)
    assert isinstance(outcomes[1].__cause__, ConnectionError)
    assert sorted(flushes.calls) == sorted([(A, ["a1", "a2", "a3"]), (B, ["b1"])])


async def test_a_flush_holds_at_most_max_rows_unless_one_caller_brings_more() -> None:
    flushes = Flushes()
    flushes.gate = asyncio.Event()
    writer = AuditWriter(flush=flushes, max_rows=3)
    tasks = [
        asyncio.create_task(writer.write(rows(A, *[f"{n}.{i}" for i in range(2)])))
        for n in range(3)
    ]
    await asyncio.sleep(0)
    flushes.gate.set()
    await asyncio.gather(*tasks)
    assert [len(actions) for _, actions in flushes.calls] == [2, 2, 2]


async def test_close_drains_then_refuses() -> None:
    flushes = Flushes()
    writer = AuditWriter(flush=flushes)
    pending = asyncio.create_task(writer.write(rows(A, "a1")))
    await asyncio.sleep(0)
    await writer.close(1.0)
    await pending
    with pytest.raises(AuditWriteFailed, match="closed"):
        await writer.write(rows(A, "a2"))
    assert flushes.calls == [(A, ["a1"])]


async def test_close_fails_what_it_could_not_drain() -> None:
    flushes = Flushes()
    flushes.gate = asyncio.Event()  # never released: the database hangs
    writer = AuditWriter(flush=flushes)
    stuck = asyncio.create_task(writer.write(rows(A, "a1")))
    queued = asyncio.create_task(writer.write(rows(A, "a2")))
    await asyncio.sleep(0)
    await writer.close(0.01)
    for task in (stuck, queued):
        with pytest.raises(AuditWriteFailed):
            await task


async def test_nothing_to_write_returns_at_once() -> None:
    flushes = Flushes()
    await AuditWriter(flush=flushes).write([])
    assert flushes.calls == []
