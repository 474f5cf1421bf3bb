"""API keys as the settings hold them: each a name, the secret, its scopes and
optionally the users whose feedback it may write (``serving.api_keys``).

A module of its own, apart from :mod:`rtrec.config`, which uses :class:`ApiKey` for that
setting: the service's guard reads the scopes and the key model too.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

_STRICT = ConfigDict(extra="forbid")


Scope = Literal["recommend", "feedback", "admin"]
SCOPES: tuple[Scope, ...] = ("recommend", "feedback", "admin")
"""recommend: /recommend, /similar; feedback: /feedback; admin: /status."""


class ApiKey(BaseModel):
    """One accepted ``X-API-Key``: a name (its rate bucket and feedback provenance), the
    secret, what it may do and, optionally, whose feedback it may write."""

    model_config = _STRICT

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    key: SecretStr
    scopes: list[Scope] = Field(min_length=1)
    """Required: a key says what it is for (all three for an operator's key)."""
    users: (
        list[Annotated[str, Field(min_length=1, max_length=129, pattern=r"^[^*]*\*?$")]] | None
    ) = None
    """User ids this key may write feedback for: exact ids, or prefixes written
    ``prefix*`` ('*' only last). None (the default): any user."""

    @classmethod
    def plain(cls, secret: str) -> ApiKey:
        """A key given as a bare string: every scope, any user, named after its hash."""
        name = "key-" + hashlib.sha256(secret.encode()).hexdigest()[:6]
        return cls(name=name, key=SecretStr(secret), scopes=list(SCOPES))

    def get_secret_value(self) -> str:
        """The key itself, as for the bare strings ``api_keys`` held before it took names."""
        return self.key.get_secret_value()
