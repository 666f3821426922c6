"""Least privilege in Redis: the embedded server's ACL users and their generated passwords.

Three users (docs/security.md), the `default` user switched off:

- `admin`: everything (operators, RedisInsight, loading the Functions library).
- `app`: the HTTP app. Keys under its prefix only; data commands, `FCALL`/`FCALL_RO`,
  `FUNCTION LIST`, `INFO`, `MODULE LIST`; no `@dangerous` or `@admin` command (FLUSHALL,
  CONFIG, KEYS, SHUTDOWN, ...), no EVAL/SCRIPT, no FUNCTION LOAD/DELETE/FLUSH, no search index
  changes. A Function runs with its caller's permissions, so the prefix bounds the Functions
  too; Redis ACLs cannot name single Functions, which is why loading them is admin-only.
- `worker`: loaders and workers. Like `app`, plus search index changes (FT.CREATE, aliases,
  FT.DROPINDEX for reindexing).

Passwords are generated once per data folder (`credentials.json`, mode 0600, never in the
repo); the ACL file Redis reads holds only their SHA-256 hashes and is rewritten at each start
(so a changed key prefix is picked up).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

USERS = ("admin", "app", "worker")
CREDENTIALS_FILE = "credentials.json"
ACL_FILE = "users.acl"
PREFIX_RE = re.compile(r"\A[A-Za-z0-9_.:-]{1,32}\Z")
# What no data user may do (besides @dangerous and @admin), and search index changes the app
# never makes.
INDEX_ADMIN = ("ft.create", "ft.alter", "ft.dropindex", "ft.aliasadd", "ft.aliasupdate",
               "ft.aliasdel", "ft.synupdate", "ft.dictadd", "ft.dictdel")  # fmt: skip
DATA_USER = (
    "+@all -@dangerous -@admin -@scripting "
    "+fcall +fcall_ro +function|list +info +module|list -ft.config"
)


@dataclass(frozen=True)
class Credentials:
    passwords: dict[str, str]

    def url(self, user: str, host: str, port: int) -> str:
        return f"redis://{user}:{quote(self.passwords[user], safe='')}@{host}:{port}/0"


def load_or_create(data_dir: Path) -> Credentials:
    """The data folder's passwords; generated (0600) on first use."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if set(stored) >= set(USERS):
            return Credentials({u: str(stored[u]) for u in USERS})
    data_dir.mkdir(parents=True, exist_ok=True)
    passwords = {u: secrets.token_urlsafe(32) for u in USERS}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(passwords, fh)
    tmp.replace(path)
    return Credentials(passwords)


def rules(prefix: str) -> dict[str, str]:
    """Each user's ACL rules (after `on #<hash>`) for the key prefix."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"key prefix {prefix!r}: 1-32 characters of letters, digits or _.:-")
    keys = f"resetkeys ~{prefix}* resetchannels"
    no_index = " ".join(f"-{c}" for c in INDEX_ADMIN)
    return {
        "admin": "~* &* +@all",
        "app": f"{keys} {DATA_USER} {no_index}",
        "worker": f"{keys} {DATA_USER}",
    }


def acl_text(creds: Credentials, prefix: str) -> str:
    lines = ["user default off resetpass -@all"]
    for user, rule in rules(prefix).items():
        digest = hashlib.sha256(creds.passwords[user].encode()).hexdigest()
        lines.append(f"user {user} on #{digest} {rule}")
    return "\n".join(lines) + "\n"


def write_acl_file(data_dir: Path, creds: Credentials, prefix: str) -> Path:
    path = data_dir / ACL_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(acl_text(creds, prefix))
    return path
