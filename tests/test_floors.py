"""pyproject.toml's dependency floors are exactly the versions constraints/floors.txt pins,
the set that .ci/run installs together and tests."""

import pathlib
import re

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).parent.parent


def test_declared_floors_are_the_tested_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9.]+)", line).groups()
            pins[name.lower()] = Version(version)
    for text in project["dependencies"]:
        requirement = Requirement(text)
        floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert floors, f"{text}: no floor declared"
        assert pins.get(requirement.name.lower()) == floors[0], (
            f"{text}: constraints/floors.txt pins {pins.get(requirement.name.lower())}"
        )
