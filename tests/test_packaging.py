"""pyproject.toml and environment.yml must pin the same versions."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        name, sep, version = line.partition("==")
        assert sep, f"{line!r} is not pinned with =="
        pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def test_pyproject_and_environment_pin_the_same_versions():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_part = next(d["pip"] for d in env if isinstance(d, dict))
    assert _pins(pyproject) == _pins(pip_part)
    assert _pins(pyproject)["torch"] == "2.14.1" and _pins(pyproject)["torchvision"] == "0.29.1"
