"""Users: names, roles and scrypt password hashes, kept in a small file.

The file is like an htpasswd file, one user per line::

    alice:user:scrypt$16384$8$1$<salt>$<hash>:3f9c0a6e1b2d4c58

The last field is the user's I{generation}: a random tag made when the user
is added. Every token records its owner's generation when it is issued, so
removing a user and adding one with the same name never revives the old
user's tokens. Lines without it (files written before it existed) still
load; such a user keeps the tokens issued to it until it is removed.

It is written atomically (temporary file, fsync, rename) with mode 0600,
keeping its owner when root rewrites it (C{cmdd user} run as root for a
daemon running as another user).
Hashing is deliberately slow (scrypt): callers in the daemon run it on a
thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import attrs

from cmdd.files import write_private_file

#: C{metrics} may only read C{/metrics} (and manage its own tokens): for scrapers.
ROLES = ("admin", "user", "metrics")
USERS_NAME = "users"
_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\Z")
_GENERATION = re.compile(r"[0-9a-f]{16}\Z")
# scrypt cost: n=2**14, r=8 (16 MiB, ~50 ms): the usual interactive setting.
_N, _R, _P = 2**14, 8, 1


class UserError(ValueError):
    """A bad user name, role, password or users file; the message says which."""


@attrs.frozen
class User:
    """A cmdd user (not a Unix user)."""

    name: str
    role: str
    password_hash: str
    #: Random tag of this incarnation of the user (C{None} in old files).
    generation: str | None = None

    @property
    def is_admin(self) -> bool:
        """Admins see and manage every job."""
        return self.role == "admin"


def check_name(name: str) -> str:
    """A valid user name, or L{UserError}."""
    if not _NAME.match(name):
        raise UserError(
            f"invalid user name {name!r}: 1-32 of a-z 0-9 _ . -, starting with a letter or _"
        )
    return name


def check_role(role: str) -> str:
    """A valid role, or L{UserError}."""
    if role not in ROLES:
        raise UserError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    return role


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """An encoded scrypt hash of C{password} with a fresh salt."""
    if not password:
        raise UserError("the password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether C{password} matches the encoded hash (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(actual, expected)


def new_generation() -> str:
    """A fresh generation tag for a newly added user (64 random bits)."""
    return secrets.token_hex(8)


def new_user(name: str, role: str, password_hash: str) -> User:
    """A user being added now: valid name and role, a fresh generation."""
    return User(check_name(name), check_role(role), password_hash, new_generation())


def generate_password() -> str:
    """A random password (128 bits), easy to copy."""
    return secrets.token_urlsafe(16)


def parse_users(text: str, source: str = "users file") -> dict[str, User]:
    """Users from the file's text.

    @raise UserError: a malformed line, naming it.
    """
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) not in (3, 4):
            raise UserError(f"{source} line {number}: expected name:role:hash:generation")
        name, role, password_hash = parts[:3]
        generation = parts[3] if len(parts) == 4 else None
        try:
            if generation is not None and not _GENERATION.match(generation):
                raise UserError(f"invalid generation {generation!r}: 16 hex digits")
            users[check_name(name)] = User(name, check_role(role), password_hash, generation)
        except UserError as e:
            raise UserError(f"{source} line {number}: {e}") from None
    return users


def format_users(users: dict[str, User]) -> str:
    """The file's text for C{users}."""
    lines = ["# cmdd users: name:role:scrypt hash:generation. Manage with `cmdd user`."]
    lines += [_line(u) for u in sorted(users.values(), key=_name)]
    return "\n".join(lines) + "\n"


def _line(user: User) -> str:
    line = f"{user.name}:{user.role}:{user.password_hash}"
    return line if user.generation is None else f"{line}:{user.generation}"


def _name(user: User) -> str:
    return user.name


def read_users(path: str) -> dict[str, User]:
    """The users in the file at C{path}; empty if it does not exist."""
    try:
        with open(path, encoding="utf-8") as users_file:
            return parse_users(users_file.read(), path)
    except FileNotFoundError:
        return {}


def write_users(path: str, users: dict[str, User]) -> None:
    """Replace the users file atomically, mode 0600, keeping its owner."""
    write_private_file(path, format_users(users).encode("utf-8"))
