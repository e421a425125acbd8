"""Transport security and caller authentication settings.

TLS: `tls_cert` + `tls_key` (PEM files) serve TLS; adding `tls_client_ca` requires and verifies
client certificates (mTLS). Auth: a tokens file maps bearer tokens (held in environment
variables, never in the file) to scopes:

    tokens:
      - name: checkout-service        # who it is, for logs
        token_env: SD_TOKEN_CHECKOUT   # the environment variable holding the secret token
        scopes: [decide]
      - name: operator
        token_env: SD_TOKEN_OPERATOR
        scopes: [decide, admin]

Scopes: `read` (rules status, decision and dispatch lookups, watching dispatches, inbox reads,
list checks), `decide` (Decide, Dispatch, cancelling dispatches, events; and everything `read`
allows) and `admin` (rules reload, list changes, dead-letter re-drive; and everything `read`
allows). A monitoring client needs only `read`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from smart_dispatch.errors import ConfigurationError

SCOPES = ("read", "decide", "admin")
#: The scopes that also grant each scope.
GRANTED_BY = {
    "read": frozenset({"read", "decide", "admin"}),
    "decide": frozenset({"decide"}),
    "admin": frozenset({"admin"}),
}


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Callers by the SHA-256 of their token (tokens themselves are not kept)."""

    by_digest: Mapping[str, Caller]

    def caller(self, token: str) -> Caller | None:
        return self.by_digest.get(token_digest(token))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path, env: Mapping[str, str]) -> TokenTable:
    """Read a tokens file. Raises `ConfigurationError` naming the file and entry."""
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"{where}: cannot read tokens file: {exc}") from exc
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError(f"{where}: expected `tokens:` with a list of entries")
    table: dict[str, Caller] = {}
    for index, entry in enumerate(entries):
        label = f"{where}: tokens[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "token_env", "scopes"}:
            raise ConfigurationError(f"{label}: keys are name, token_env, scopes")
        name, variable, scopes = entry.get("name"), entry.get("token_env"), entry.get("scopes")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{label}: name is required")
        if not isinstance(variable, str) or not env.get(variable):
            raise ConfigurationError(f"{label} ({name}): environment variable {variable!r} is not set")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ConfigurationError(f"{label} ({name}): scopes must be a list of {', '.join(SCOPES)}")
        digest = token_digest(env[variable])
        if digest in table:
            raise ConfigurationError(f"{label} ({name}): same token as {table[digest].name!r}")
        table[digest] = Caller(name, frozenset(scopes))
    return TokenTable(table)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS credentials; with `client_ca`, clients must present a certificate it signed (mTLS)."""
    try:
        chain = (key.read_bytes(), cert.read_bytes())
        root = client_ca.read_bytes() if client_ca is not None else None
    except OSError as exc:
        raise ConfigurationError(f"cannot read TLS file: {exc}") from exc
    return grpc.ssl_server_credentials([chain], root_certificates=root, require_client_auth=root is not None)
