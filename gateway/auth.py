"""Client authentication by bearer keys, compared in constant time against their SHA-256 digests.

The gateway keeps only digests; every configured key is compared on every request, so the time taken
tells nothing about which key (or which prefix) came close. The client's key is never forwarded.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["ClientAuth"]


class ClientAuth:
    """The set of accepted client keys."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys if k)
        if not self._digests:
            raise ValueError("client auth needs at least one non-empty key")

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header carries one of the keys (`Bearer <key>`)."""
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found
