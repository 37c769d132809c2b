"""The audit rows' JSON parameter (``rows_json``): every uuid the rows can hold, including
the driver's own uuid type, arrives as its canonical text; other objects are refused."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest
from asyncpg.pgproto import pgproto

from healthdb.internal.audit.append import rows_json


def test_driver_uuids_and_timestamps_are_written_as_the_database_reads_them() -> None:
    key = uuid.UUID(int=42)
    stamp = dt.datetime(2026, 12, 4, 17, 0, 0, 5, tzinfo=dt.UTC)
    row = {"id": key, "actor_id": pgproto.UUID(str(key)), "occurred_at": stamp, "seq": 3}
    assert orjson.loads(rows_json([row])) == [
        {
            "id": str(key),
            "actor_id": str(key),
            "occurred_at": "2026-12-04T17:00:00.000005+00:00",
            "seq": 3,
        }
    ]


def test_an_object_that_is_not_a_column_value_is_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        rows_json([{"reason": object()}])
