"""Synthetic FHIR ``Patient`` resources (tests, benchmarks, demos): reproducible for a seed,
every mapped element filled most of the time, and never anyone's real data — phone numbers
use the 555-01XX exchange reserved for fiction and SSNs start with 9, which no SSN does.
Names include apostrophes and letters outside ASCII, which must be stored verbatim, and no
name that a search elsewhere in the test suite looks for (its databases are shared).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from typing import Any

from healthdb_api.fhir.mapping import SSN_SYSTEM

__all__ = ["ndjson", "patients"]

_GIVEN = ("Zoë", "Siobhán", "Ifeoma", "Thandiwe", "Kaito", "Wiremu", "Yaretzi", "Ódhrán", "Lerato")
_FAMILY = ("Vanterpool", "D'Ancona", "Ødegård", "Nguyễn", "Wojciechowski", "Okonkwo", "Jaramillo")
_GENDER = ("female", "male", "other", "unknown")
_STREETS = ("Main St", "Oak Ave", "Elm St", "Cedar Rd", "Pine Ln")
_CITIES = (("Springfield", "IL", "62704"), ("Portland", "OR", "97205"), ("Austin", "TX", "78701"))
_AREA_CODES = ("212", "312", "415", "617", "206", "303")


def patients(
    count: int, *, seed: int = 7, mrn_system: str, prefix: str = "SYN"
) -> Iterator[dict[str, Any]]:
    """``count`` FHIR Patients with MRNs ``<prefix>-0000001``…, the same for the same seed."""
    rng = random.Random(seed)
    epoch = dt.date(1930, 1, 1)
    for number in range(1, count + 1):
        identifiers = [{"system": mrn_system, "value": f"{prefix}-{number:07d}"}]
        if rng.random() < 0.8:
            identifiers.append({"system": SSN_SYSTEM, "value": f"9{rng.randrange(10**8):08d}"})
        resource: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": identifiers,
            "name": [{"family": rng.choice(_FAMILY), "given": [rng.choice(_GIVEN)]}],
            "gender": rng.choice(_GENDER),
            "birthDate": (epoch + dt.timedelta(days=rng.randrange(33_000))).isoformat(),
        }
        telecom = []
        if rng.random() < 0.85:
            phone = f"+1{rng.choice(_AREA_CODES)}55501{rng.randrange(100):02d}"
            telecom.append({"system": "phone", "value": phone})
        if rng.random() < 0.7:
            telecom.append({"system": "email", "value": f"p{number}@example.org"})
        if telecom:
            resource["telecom"] = telecom
        if rng.random() < 0.9:
            city, state, postal = rng.choice(_CITIES)
            line = f"{rng.randrange(1, 999)} {rng.choice(_STREETS)}"
            resource["address"] = [
                {"line": [line], "city": city, "state": state, "postalCode": postal}
            ]
        yield resource


def ndjson(resources: Iterator[dict[str, Any]]) -> str:
    """Resources as NDJSON text."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in resources)
