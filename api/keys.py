"""API keys (contract section 10): a JSON file of SHA-256 hashes, each key covering some
programs or all (``"*"``).

Only hashes are stored; a presented key is hashed and compared with every stored hash in
constant time. The file is re-read when it changes (its size, modification time or inode),
so that a revocation needs no restart; while it cannot be read or parsed, no key is valid.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from streams.exceptions import SegmentStreamError

logger = logging.getLogger(__name__)

ALL_PROGRAMS = "*"
MAX_FILE_BYTES = 1 << 20  # ~5,000 keys
# A file written within this time may be written again within the same timestamp tick:
# read it at every lookup until then.
_SETTLE_NS = 1_000_000_000
KEY_PREFIX = "sgk_"  # makes a leaked key recognisable to secret scanners


class KeysFileError(SegmentStreamError):
    """The keys file cannot be read or does not hold valid keys."""


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    programs: Annotated[list[Annotated[str, Meta(min_length=1, max_length=128)]],
                        Meta(min_length=1)]


class _File(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[_Entry]


_decoder = msgspec.json.Decoder(_File)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    programs: frozenset[str]

    def covers(self, program: str) -> bool:
        return ALL_PROGRAMS in self.programs or program in self.programs


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse(raw: bytes) -> tuple[ApiKey, ...]:
    """The keys of a keys file's bytes; raises KeysFileError."""
    try:
        entries = _decoder.decode(raw).keys
    except msgspec.DecodeError as exc:
        raise KeysFileError(str(exc)) from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise KeysFileError("a key name appears twice")
    return tuple(ApiKey(e.name, bytes.fromhex(e.sha256), frozenset(e.programs))
                 for e in entries)


class KeyRing:
    """The keys of a keys file, as it is now."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._stamp: tuple[int, ...] | None = None  # of the file last read (or failed)
        self._keys: tuple[ApiKey, ...] = ()
        self._problem = ""
        self._refresh()
        if self._problem:  # at start, a broken file is an error, not "no keys"
            raise KeysFileError(f"{self._path}: {self._problem}")

    def find(self, presented: str) -> ApiKey | None:
        """The key ``presented`` is, if it is a current one (every stored hash is compared, in
        constant time: how long it takes says nothing of which hashes are close)."""
        self._refresh()
        wanted = digest(presented)
        found = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, wanted):
                found = key
        return found

    def __len__(self) -> int:
        self._refresh()
        return len(self._keys)

    def _refresh(self) -> None:
        stamp: tuple[int, ...] = ()
        try:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if stamp == self._stamp and time.time_ns() - st.st_mtime_ns > _SETTLE_NS:
                return
            if st.st_size > MAX_FILE_BYTES:
                raise KeysFileError(f"{st.st_size} bytes: more than {MAX_FILE_BYTES}")
            keys = parse(self._path.read_bytes())
        except (OSError, KeysFileError) as exc:
            problem = str(exc)
            if not self._problem or stamp != self._stamp:
                logger.error("API keys file %s unusable (%s): refusing every key until it is "
                             "fixed", self._path, problem)
            # (a broken file is read again only once it changes)
            self._problem, self._stamp, self._keys = problem, stamp, ()
            return
        if self._stamp is not None and keys != self._keys:
            logger.warning("API keys file %s changed: %d key(s)", self._path, len(keys))
        self._problem, self._stamp, self._keys = "", stamp, keys


# The `segments keys` commands: the file is rewritten whole (a new file renamed over the
# old), under a lock, so that a reader never sees half a file and no update is lost.

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[list[_Entry]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _decoder.decode(path.read_bytes()).keys if path.exists() else []
        before = list(entries)
        yield entries
        if entries != before:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                if path.exists():  # (new files: 0600, mkstemp's; else the file's mode, owner)
                    _same_owner_and_mode(fd, os.stat(path))
                with os.fdopen(fd, "wb") as out:
                    out.write(_encoder.encode(_File(entries)) + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
                directory = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)  # the rename itself survives a crash
                finally:
                    os.close(directory)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


def _same_owner_and_mode(fd: int, old: os.stat_result) -> None:
    """The new file gets the old one's owner (e.g. the workers' user, when root runs the
    command) and mode; a user who cannot give it the owner gets an error, not a file the
    workers may no longer read."""
    if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except PermissionError:
            raise KeysFileError(f"the keys file belongs to uid {old.st_uid}: run the command "
                                "as that user (or root)") from None
    os.chmod(fd, stat.S_IMODE(old.st_mode))


def add_key(path: str | Path, name: str, programs: list[str]) -> str:
    """Store a new key's hash under ``name``; return the key (shown once, stored nowhere)."""
    if not programs or any(not p or len(p) > 128 for p in programs):
        raise KeysFileError("a key needs at least one program (or '*'), each 1-128 characters")
    if not 1 <= len(name) <= 128:
        raise KeysFileError("a key's name has 1-128 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with _locked(Path(path)) as entries:
            if any(e.name == name for e in entries):
                raise KeysFileError(f"a key named {name!r} exists; revoke it first")
            entries.append(_Entry(name, digest(key).hex(), sorted(set(programs))))
    except msgspec.DecodeError as exc:
        raise KeysFileError(f"{path}: {exc}") from None
    return key


def revoke_key(path: str | Path, name: str) -> bool:
    """Remove the key named ``name``; False if there is none."""
    try:
        with _locked(Path(path)) as entries:
            kept = [e for e in entries if e.name != name]
            found = len(kept) != len(entries)
            entries[:] = kept
    except msgspec.DecodeError as exc:
        raise KeysFileError(f"{path}: {exc}") from None
    return found
