"""The audit seal's canonical JSON: orjson's bytes must stay exactly those of the stdlib
encoding the chain was defined with, or verification of existing chains would break."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from healthdb.internal.audit.chain import SEALED, _canonical, row_hash

# Strings a database column can hold (no lone surrogates: neither encoder accepts them).
texts = st.text(st.characters(blacklist_categories=["Cs"]))
values = st.one_of(
    st.none(),
    texts,
    st.integers(-(2**63), 2**63 - 1),
    st.uuids(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.datetimes(timezones=st.just(dt.UTC)).map(lambda t: t.replace(microsecond=0)),
    st.datetimes(  # a foreign offset (kept off the calendar's edges, where UTC overflows)
        min_value=dt.datetime(2, 1, 1),
        max_value=dt.datetime(9998, 12, 31),
        timezones=st.builds(
            dt.timezone,
            st.timedeltas(min_value=-dt.timedelta(hours=23), max_value=dt.timedelta(hours=23)),
        ),
    ),
    st.lists(texts, max_size=5),
)


def stdlib_hash(fields: dict[str, Any]) -> str:
    document = {name: _canonical(fields.get(name)) for name in SEALED}
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@given(st.fixed_dictionaries(dict.fromkeys(SEALED, values)))
def test_the_seal_matches_the_stdlib_encoding(fields: dict[str, Any]) -> None:
    assert row_hash(fields) == stdlib_hash(fields)


def test_control_characters_and_unicode_are_encoded_the_same() -> None:
    fields = dict.fromkeys(SEALED)
    fields.update(
        id=uuid.UUID(int=7),
        reason='quote " backslash \\ \n\t\x00\x1f\x7f é ✓ \u2028 𝄞',
        phi_fields=["ssn", "notes"],
        seq=3,
    )
    assert row_hash(fields) == stdlib_hash(fields)
