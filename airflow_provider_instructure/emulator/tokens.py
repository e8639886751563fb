"""JWTs the emulator issues and checks: HS256, signed with a key that is new for every server."""

from __future__ import annotations

import secrets
import threading
import time
import uuid

import jwt


class TokenRejected(Exception):
    """The bearer token is missing, malformed, expired, revoked or signed by someone else."""


class TokenAuthority:
    """Issues and verifies the emulator's access tokens."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._issued: set[str] = set()
        self._revoked: set[str] = set()

    def issue(self, client_id: str, lifetime: float, scope: str) -> str:
        now = time.time()
        jti = uuid.uuid4().hex
        claims = {
            "sub": client_id,
            "iat": int(now),
            # ceil so that a lifetime of a few seconds never yields an already-expired token
            "exp": int(now + lifetime + 0.999),
            "jti": jti,
            "scope": scope,
        }
        with self._lock:
            self._issued.add(jti)
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str | None) -> dict[str, object]:
        if not token:
            raise TokenRejected("Missing access token; send 'Authorization: Bearer <token>'.")
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"])
        except jwt.ExpiredSignatureError:
            raise TokenRejected("The access token has expired.") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("The access token signature is not valid.") from None
        except jwt.InvalidTokenError:
            raise TokenRejected("The access token is malformed.") from None
        with self._lock:
            if claims.get("jti") in self._revoked:
                raise TokenRejected("The access token has been revoked.")
        return claims

    def revoke_all(self) -> int:
        """Invalidate every token issued so far; returns how many there were."""
        with self._lock:
            self._revoked |= self._issued
            return len(self._issued)
