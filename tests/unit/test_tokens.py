"""JWT access tokens: the algorithm allow-list and every registered claim are enforced."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from healthdb import Role
from healthdb_api.auth.sessions import new_refresh_token
from healthdb_api.auth.tokens import (
    Claims,
    InvalidToken,
    TokenConfig,
    VerifiedTokens,
    decode_access,
    issue_access,
)

CONFIG = TokenConfig(
    secret="unit-test-secret-" + "s" * 40,
    issuer="healthdb",
    audience="healthdb-api",
    access_ttl=900,
)
CLAIMS = Claims(user_id=uuid.uuid4(), clinic_id=uuid.uuid4(), role=Role.DOCTOR)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(**overrides: Any) -> dict[str, Any]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    payload: dict[str, Any] = {
        "sub": str(CLAIMS.user_id),
        "cid": str(CLAIMS.clinic_id),
        "role": "doctor",
        "typ": "access",
        "iss": CONFIG.issuer,
        "aud": CONFIG.audience,
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def _raw_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """Assemble a JWT by hand (PyJWT refuses to make some of these on purpose)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    digest = hashlib.sha256 if header["alg"] == "HS256" else hashlib.sha512
    return f"{signing_input}.{_b64(hmac.new(key, signing_input.encode(), digest).digest())}"


def _sign(payload: dict[str, Any], *, secret: str = CONFIG.secret, alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg)


def test_round_trip() -> None:
    token = issue_access(CONFIG, CLAIMS)
    assert decode_access(CONFIG, token) == CLAIMS


def test_a_hand_made_valid_token_is_accepted() -> None:
    # Proves the helpers below build otherwise-valid tokens: each test changes one thing.
    assert decode_access(CONFIG, _sign(_payload())) == CLAIMS
    token = _raw_token({"alg": "HS256", "typ": "JWT"}, _payload(), CONFIG.secret.encode())
    assert decode_access(CONFIG, token) == CLAIMS


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(alg: str) -> None:
    token = _raw_token({"alg": alg, "typ": "JWT"}, _payload(), None)
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, token)


def test_hs512_with_the_right_secret_is_rejected() -> None:
    token = _raw_token({"alg": "HS512", "typ": "JWT"}, _payload(), CONFIG.secret.encode())
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, token)


def test_rs256_is_rejected() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_payload(), key, algorithm="RS256")
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, token)


def test_rs256_to_hs256_key_confusion_is_rejected() -> None:
    # The classic attack: HMAC-sign with a public key the verifier might use as a secret,
    # labelled either HS256 or RS256.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs = _raw_token({"alg": "HS256", "typ": "JWT"}, _payload(), public_pem)
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = hs.split(".")[1]
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    rs = f"{header}.{body}.{_b64(mac)}"
    for token in (hs, rs):
        with pytest.raises(InvalidToken):
            decode_access(CONFIG, token)


def test_wrong_secret_and_tampering_are_rejected() -> None:
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, _sign(_payload(), secret="another-secret-" + "t" * 40))
    token = issue_access(CONFIG, CLAIMS)
    header, payload, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["role"] = "clinic_admin"
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, f"{header}.{_b64(json.dumps(forged).encode())}.{signature}")


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "someone-else"},
        {"aud": ["someone-else"]},
        {"iss": "evil"},
        {"exp": int(dt.datetime.now(dt.UTC).timestamp()) - 1},
        {"nbf": int(dt.datetime.now(dt.UTC).timestamp()) + 3600},
        {"typ": "refresh"},
        {"typ": None},
        {"exp": None},
        {"nbf": None},
        {"iat": None},
        {"iss": None},
        {"aud": None},
        {"sub": None},
        {"cid": None},
        {"sub": "not-a-uuid"},
        {"cid": "not-a-uuid"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_bad_claims_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, _sign(_payload(**overrides)))


def test_an_expired_issued_token_is_rejected() -> None:
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=CONFIG.access_ttl + 1)
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, issue_access(CONFIG, CLAIMS, now=issued))


def test_a_token_from_the_future_is_rejected() -> None:
    issued = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, issue_access(CONFIG, CLAIMS, now=issued))


def test_unknown_role_fails_closed_to_least_privilege() -> None:
    claims = decode_access(CONFIG, _sign(_payload(role="superuser")))
    assert claims.role is Role.RECEPTIONIST


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", new_refresh_token(uuid.uuid4()), "x" * 10_000]
)
def test_garbage_and_refresh_tokens_are_not_access_tokens(token: str) -> None:
    with pytest.raises(InvalidToken):
        decode_access(CONFIG, token)


class CountingDecode:
    """Counts the full verifications (PyJWT's decode) behind :class:`VerifiedTokens`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = jwt.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", decode)


def test_a_verified_token_is_answered_from_memory_inside_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting = CountingDecode(monkeypatch)
    now = [dt.datetime.now(dt.UTC).timestamp()]
    tokens = VerifiedTokens(CONFIG, clock=lambda: now[0])
    token = issue_access(CONFIG, CLAIMS)
    assert tokens.decode(token) == CLAIMS
    assert tokens.decode(token) == CLAIMS
    assert counting.calls == 1
    now[0] += CONFIG.access_ttl + 1  # past exp: verified again, never answered from memory
    tokens.decode(token)
    assert counting.calls == 2


def test_memory_never_accepts_what_verification_refuses() -> None:
    tokens = VerifiedTokens(CONFIG)
    token = issue_access(CONFIG, CLAIMS)
    tokens.decode(token)
    header, payload, signature = token.split(".")
    for forged in (f"{header}.{payload}.{signature[:-2]}AA", token + "x", token.upper()):
        with pytest.raises(InvalidToken):
            tokens.decode(forged)
    expired = issue_access(CONFIG, CLAIMS, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    with pytest.raises(InvalidToken):
        tokens.decode(expired)


def test_memory_is_bounded() -> None:
    tokens = VerifiedTokens(CONFIG, size=3)
    issued = [issue_access(CONFIG, CLAIMS) for _ in range(5)]
    for token in issued:
        tokens.decode(token)
    assert len(tokens._seen) == 3
    assert list(tokens._seen) == issued[2:]
