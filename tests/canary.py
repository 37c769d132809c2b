"""Canary values and the session-wide log capture that must never see one.

``canary(kind)`` returns a unique, recognisable string (``CNRY<kind>x<hex>``) and registers
it; tests put canaries wherever PHI or secrets go. :data:`LOGS` renders every log record of
the run -- structlog's and stdlib's, at DEBUG, through the production pipeline
(:func:`healthdb.logging.configure`, redaction included) -- into memory, and the autouse
fixtures in ``tests/conftest.py`` fail any test (and the session) whose log lines contain
a registered canary.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import threading

import phonenumbers
import pytest
import structlog

_REGISTRY: set[str] = set()
_LOCK = threading.Lock()
_pattern: re.Pattern[str] | None = None


def register(value: str) -> str:
    """Record ``value`` as a canary; return it."""
    global _pattern
    with _LOCK:
        _REGISTRY.add(value)
        _pattern = None
    return value


def canary(kind: str) -> str:
    """A unique canary string naming ``kind`` (letters, digits and ``_`` only)."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", kind):
        raise ValueError("a canary kind is a plain word")
    return register(f"CNRY{kind}x{secrets.token_hex(8)}")


def canary_email() -> str:
    """A valid email address whose local part is a registered canary."""
    return f"{canary('email')}@example.org"


def canary_phone() -> str:
    """A valid E.164 number, random enough to be unique in a test run, registered."""
    rng = random.SystemRandom()
    while True:
        number = f"+1212{rng.randint(2, 9)}{rng.randint(0, 999_999):06d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(number, None)):
            return register(number)


def registered() -> frozenset[str]:
    with _LOCK:
        return frozenset(_REGISTRY)


def found_in(text: str) -> set[str]:
    """The registered canaries that occur in ``text`` (case-insensitively)."""
    global _pattern
    with _LOCK:
        if not _REGISTRY:
            return set()
        if _pattern is None:
            alternatives = sorted(_REGISTRY, key=len, reverse=True)
            _pattern = re.compile("|".join(map(re.escape, alternatives)), re.IGNORECASE)
        pattern = _pattern
    return {match.group(0) for match in pattern.finditer(text)}


class LogCapture:
    """A text stream that keeps rendered log lines in memory, checked and dropped per test."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._handler: logging.Handler | None = None
        self._lock = threading.Lock()

    # The stream interface logging.StreamHandler needs.
    def write(self, text: str) -> int:
        with self._lock:
            self.lines.extend(line for line in text.splitlines() if line.strip())
        return len(text)

    def flush(self) -> None:
        pass

    def mark(self) -> int:
        """A position in the capture, for :meth:`text` ``since``."""
        with self._lock:
            return len(self.lines)

    def text(self, since: int = 0) -> str:
        """Everything captured since the last check (or since a :meth:`mark`)."""
        with self._lock:
            return "\n".join(self.lines[since:])

    def install(self) -> None:
        """Render all logging at DEBUG into this capture, keeping pytest's own handlers."""
        from healthdb.logging import configure

        root = logging.getLogger()
        previous = list(root.handlers)
        configure(level="DEBUG", json=True, stream=self)
        self._handler = root.handlers[0]
        root.handlers.extend(
            h for h in previous if not isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
        )
        # Cached loggers would ignore structlog.testing.capture_logs, used by other tests.
        structlog.configure(cache_logger_on_first_use=False)

    def ensure_installed(self) -> None:
        """Re-install if a test reconfigured logging (a CLI run calls ``configure``)."""
        root = logging.getLogger()
        if (
            self._handler not in root.handlers
            or root.level != logging.DEBUG
            or structlog.get_config()["cache_logger_on_first_use"]
        ):
            self.install()

    def check(self, where: str) -> None:
        """Fail when a captured line holds a canary; the lines are dropped either way."""
        with self._lock:
            lines, self.lines = self.lines, []
        leaks = [(line, found_in(line)) for line in lines]
        leaks = [(line, found) for line, found in leaks if found]
        if leaks:
            shown = "\n".join(f"  {sorted(found)} in: {line[:400]}" for line, found in leaks[:5])
            pytest.fail(
                f"{len(leaks)} log line(s) captured during {where} contain canary values "
                f"(PHI or secrets reached the logs):\n{shown}",
                pytrace=False,
            )


#: The run's capture (installed by the session fixture in tests/conftest.py).
LOGS = LogCapture()
