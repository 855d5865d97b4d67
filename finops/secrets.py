"""This installation's secrets: generated at first use, kept 0600 in ``<data dir>/secrets``, found by every command.

Role (DESIGN §6): the embedded store endpoint is a trust boundary that requires this installation's credentials.
Whoever can read the data dir's secret files is the installation's owner; every role and command reads them from
the data dir the settings name. Real deployments may override each secret by its environment variable (README,
"Configuration reference"); a server deployment uses ClickHouse's own users and grants instead.

Guarantee: a secret is random, written once and atomically, so processes racing at first start share it
(:func:`load_or_create_secret`); a file or directory readable or writable by group or others is refused with the
``chmod`` that fixes it; the secret itself never appears in a message or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import ConfigError

__all__ = [
    "CONTROL_OPERATOR_KEY",
    "CONTROL_SIGNING_KEY",
    "READER_USER",
    "STORE_READER_PASSWORD",
    "STORE_WRITER_PASSWORD",
    "WRITER_USER",
    "SecretFileError",
    "SecretUnreadableError",
    "StoreCredentials",
    "load_control_signing_key",
    "load_or_create_secret",
    "load_store_credentials",
    "operator_key_matches",
    "read_secret",
    "secret_path",
    "secrets_dir",
]

#: File names under ``<data dir>/secrets`` (one secret per file, so one can be handed to Grafana without the others).
STORE_WRITER_PASSWORD = "store-writer.password"
STORE_READER_PASSWORD = "store-reader.password"
CONTROL_SIGNING_KEY = "control-signing.key"
CONTROL_OPERATOR_KEY = "control-operator.key"

#: The store endpoint's two users: the writer (store roles that write: the alert worker's deliveries and commands,
#: token issue, policy writes) and the reader (``finops sql``, dashboard reads, Grafana), whose requests always run
#: read-only.
WRITER_USER = "finops_writer"
READER_USER = "finops_reader"

_SECRET_BYTES = 32


class SecretFileError(ConfigError):
    """A secret file cannot be created or read, or is readable by others; the message names the file and the fix."""


class SecretUnreadableError(SecretFileError):
    """The secret file exists but this user may not read it (another user's installation)."""


def secrets_dir(data_dir: Path) -> Path:
    """Where the installation's secrets live: ``<data dir>/secrets`` (mode 0700)."""
    return Path(data_dir) / "secrets"


def secret_path(data_dir: Path, name: str) -> Path:
    """The file of secret ``name`` (one of the ``*_PASSWORD`` / ``*_KEY`` names of this module)."""
    return secrets_dir(data_dir) / name


def _check_mode(path: Path, st: os.stat_result, *, directory: bool) -> None:
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        fix = "chmod 700" if directory else "chmod 600"
        what = "secrets directory" if directory else "secret file"
        raise SecretFileError(
            f"the {what} {path} is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o}); it is refused "
            f"until only its owner can use it: {fix} {path}"
        )


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as err:
        raise SecretFileError(
            f"cannot create the secrets directory {path} ({err.strerror or err}); run as the installation's owner "
            "or point FINOPS_DATA_DIR at a directory you own"
        ) from None
    _check_mode(path, st, directory=True)


def read_secret(path: Path) -> str | None:
    """The secret stored in ``path``, or None when the file does not exist.

    Raises:
        SecretFileError: the file (or its directory) is readable or writable by group/others, or cannot be read
            (e.g. another user's installation); the message names the file, never the secret.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SecretUnreadableError(
            f"cannot read the secret file {path} ({err.strerror or err}): only the installation's owner can; run "
            "the command as that user, or pass credentials through the environment (see the README, Security)"
        ) from None
    try:
        st = os.fstat(fd)
        _check_mode(path.parent, path.parent.stat(), directory=True)
        _check_mode(path, st, directory=False)
        raw = b""
        while chunk := os.read(fd, 4096):
            raw += chunk
    finally:
        os.close(fd)
    value = raw.decode("utf-8", "replace").strip()
    if not value:
        raise SecretFileError(f"the secret file {path} is empty: delete it and it is generated again at next start")
    return value


def load_or_create_secret(path: Path) -> str:
    """The secret in ``path``, generating it first if the file does not exist (atomic, 0600 from the start).

    The secret is ``secrets.token_hex`` (256 bits), written to a temporary file created with ``O_CREAT | O_EXCL``
    and mode 0600 from the first byte, fsynced, then linked to its name (``link`` never replaces: two processes
    racing at first start end up with the same secret).

    Blocks on a few file-system calls. Raises :class:`SecretFileError` (see :func:`read_secret`), also when the
    directory cannot be written.
    """
    existing = read_secret(path)
    if existing is not None:
        return existing
    _ensure_dir(path.parent)
    # Hex: safe in a shell, a URL and as a command-line value (a urlsafe token may start with "-").
    value = secrets.token_hex(_SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, value.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces: a concurrent first start keeps the first secret
        except FileExistsError:
            pass
    except OSError as err:
        raise SecretFileError(
            f"cannot create the secret file {path} ({err.strerror or err}); run as the installation's owner or "
            "point FINOPS_DATA_DIR at a directory you own"
        ) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    stored = read_secret(path)
    if stored is None:  # removed between link and read: not worth more than a clear error
        raise SecretFileError(f"the secret file {path} vanished while it was created; start again")
    return stored


@dataclass(frozen=True)
class StoreCredentials:
    """The store endpoint's users and passwords (secret: never log; ``repr`` hides the passwords)."""

    writer_password: str = field(repr=False)
    reader_password: str = field(repr=False)
    writer_user: str = WRITER_USER
    reader_user: str = READER_USER
    #: True when the passwords were read from the data dir's 0600 files (the caller is the installation's owner).
    from_data_dir: bool = True

    def for_role(self, *, readonly: bool) -> tuple[str, str]:
        """``(user, password)`` a client uses: the reader for read-only clients, else the writer."""
        if readonly:
            return self.reader_user, self.reader_password
        return self.writer_user, self.writer_password


def load_store_credentials(data_dir: Path, *, create: bool = True) -> StoreCredentials | None:
    """The installation's store credentials from ``<data dir>/secrets``; generated when ``create`` and absent.

    Returns None when ``create`` is False and they do not exist yet. Raises :class:`SecretFileError`.
    """
    writer_file = secret_path(data_dir, STORE_WRITER_PASSWORD)
    reader_file = secret_path(data_dir, STORE_READER_PASSWORD)
    if create:
        return StoreCredentials(load_or_create_secret(writer_file), load_or_create_secret(reader_file))
    writer, reader = read_secret(writer_file), read_secret(reader_file)
    if writer is None or reader is None:
        return None
    return StoreCredentials(writer, reader)


def load_control_signing_key(data_dir: Path, configured: str | None, *, create: bool) -> bytes | None:
    """The HMAC key that signs control commands: ``configured`` (FINOPS_CONTROL_SIGNING_KEY, for deployments that
    distribute their own) or this installation's ``<data dir>/secrets/control-signing.key``, generated when
    ``create`` (roles that sign: the alert worker, the dashboard, ``finops control``). None when neither exists and
    ``create`` is False (``finops control status`` then says it cannot verify). Raises :class:`SecretFileError`."""
    if configured:
        return configured.encode("utf-8")
    path = secret_path(data_dir, CONTROL_SIGNING_KEY)
    value = load_or_create_secret(path) if create else read_secret(path)
    return value.encode("utf-8") if value is not None else None


def operator_key_matches(data_dir: Path, presented: str) -> bool:
    """True if ``presented`` is this installation's operator key (``<data dir>/secrets/control-operator.key``,
    generated on first use). The reference is the stored file, never a variable the caller sets, and the
    comparison is of SHA-256 digests in constant time. Raises :class:`SecretFileError`."""
    stored = load_or_create_secret(secret_path(data_dir, CONTROL_OPERATOR_KEY))
    return hmac.compare_digest(hashlib.sha256(stored.encode()).digest(), hashlib.sha256(presented.encode()).digest())
