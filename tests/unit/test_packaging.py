"""The lock files pin every dependency pyproject.toml names, at a version its specifier allows,
with hashes (scripts/lock.sh makes them; the image installs requirements.lock, setup.sh
requirements-dev.lock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    return {canonicalize_name(name): version for name, version in _PIN.findall(text)}


@pytest.mark.parametrize(("lock", "groups"), [("requirements.lock", ()),
                                              ("requirements-dev.lock", ("dev",))])
def test_every_dependency_is_pinned_where_its_specifier_allows(lock: str,
                                                              groups: tuple[str, ...]) -> None:
    pinned = pins(lock)
    wanted = list(PYPROJECT["project"]["dependencies"])
    for group in groups:
        wanted += PYPROJECT["project"]["optional-dependencies"][group]
    for spec in wanted:
        req = Requirement(spec)
        version = pinned.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not in {lock}: run scripts/lock.sh"
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {req.name}=={version}, outside {req.specifier}: run scripts/lock.sh")


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_pin_has_hashes(lock: str) -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text())
    for block in blocks:
        if _PIN.match(block):
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_image_installs_the_lock_and_pins_its_base() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "requirements.lock" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("FROM "):
            assert re.match(r"FROM python:\d+\.\d+\.\d+-", line), line
