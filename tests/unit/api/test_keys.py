"""The API keys file: only hashes on disk, re-read when it changes, closed when broken."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from api.keys import KeyRing, KeysFileError, add_key, digest, revoke_key


def test_a_key_is_shown_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = add_key(path, "dashboards", ["p1", "p2", "p1"])
    text = path.read_text()
    assert key not in text and digest(key).hex() in text
    assert json.loads(text)["keys"] == [
        {"name": "dashboards", "sha256": digest(key).hex(), "programs": ["p1", "p2"]}]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    found = KeyRing(path).find(key)
    assert found is not None and found.covers("p2") and not found.covers("p3")


def test_names_are_unique_and_revoking_an_unknown_name_says_so(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "a", ["*"])
    with pytest.raises(KeysFileError, match="exists"):
        add_key(path, "a", ["p"])
    assert revoke_key(path, "a") and not revoke_key(path, "a")
    with pytest.raises(KeysFileError, match="at least one program"):
        add_key(path, "b", [])


def test_a_change_of_the_file_is_seen_by_the_next_lookup(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = add_key(path, "first", ["*"])
    ring = KeyRing(path)
    second = add_key(path, "second", ["p"])
    assert ring.find(second) is not None  # added: valid without a restart
    revoke_key(path, "first")
    assert ring.find(first) is None and ring.find(second) is not None
    assert ring.find("") is None and ring.find("sgk_" + "x" * 43) is None


def test_a_broken_file_refuses_every_key_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = add_key(path, "k", ["*"])
    good = path.read_bytes()
    ring = KeyRing(path)
    path.write_text('{"keys": [{"name": "k", "sha256": "not hex", "programs": ["*"]}]}')
    assert ring.find(key) is None
    path.unlink()
    assert ring.find(key) is None
    path.write_bytes(good)
    assert ring.find(key) is not None


@pytest.mark.parametrize("text", [
    "", "[]", '{"keys": {}}', '{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '"}]}',
    '{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '", "programs": []}]}',
    '{"keys": [{"name": "a", "sha256": "' + "A" * 64 + '", "programs": ["p"]}]}',
    '{"keys": [], "extra": 1}',
    '{"keys": [' + ",".join(['{"name": "a", "sha256": "' + "0" * 64 + '", "programs": ["p"]}']
                            * 2) + "]}",
])
def test_a_keys_file_that_is_not_valid_stops_the_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(text)
    with pytest.raises(KeysFileError):
        KeyRing(path)


def test_a_rewrite_keeps_the_mode_the_file_was_given(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "a", ["*"])
    os.chmod(path, 0o644)  # e.g. for a container's user (the file holds hashes only)
    add_key(path, "b", ["p"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
