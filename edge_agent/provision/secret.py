"""Broker passwords: generated once, kept in the operator's store, hashed in Mosquitto's own format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

# Mosquitto 2.0 `mosquitto_passwd`: "$7$<iterations>$<b64 salt(12)>$<b64 PBKDF2-HMAC-SHA512(64)>".
_ITERATIONS = 101
_SALT_BYTES = 12


def new_password() -> str:
    """URL-safe characters only, so the password can sit in mosquitto.conf (`remote_password`) unquoted."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(base64.b64encode(expected).decode(), digest)
    except ValueError:
        return False


class PasswordStore:
    """`<out>/secrets/passwords` (mode 0600): one `name password` per line; a name keeps its password forever."""

    def __init__(self, path: Path):
        self.path = path
        self._passwords: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    name, password = line.split(maxsplit=1)
                    self._passwords[name] = password.strip()
        self._dirty = False

    def get(self, name: str) -> str:
        if name not in self._passwords:
            self._passwords[name] = new_password()
            self._dirty = True
        return self._passwords[name]

    def save(self) -> bool:
        if not self._dirty:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        text = "# Broker passwords of this mesh (edge-moa provision). Keep secret; never edit a line in place.\n"
        text += "".join(f"{name} {password}\n" for name, password in sorted(self._passwords.items()))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(self.path)
        self._dirty = False
        return True


def passwd_lines(store: PasswordStore, names: list[str], previous: str | None) -> str:
    """A Mosquitto password file; hashes from `previous` are kept while they match, so re-runs change nothing."""
    old = {}
    for line in (previous or "").splitlines():
        if ":" in line:
            name, hashed = line.split(":", 1)
            old[name] = hashed
    lines = []
    for name in names:
        password = store.get(name)
        hashed = old.get(name)
        if hashed is None or not verify_password(password, hashed):
            hashed = hash_password(password)
        lines.append(f"{name}:{hashed}\n")
    return "".join(lines)
