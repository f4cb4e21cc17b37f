"""A reload's parse in a child process: the new settings share every unchanged running subject
(the same objects), carry the changed and added ones, refuse an invalid file with its key path,
and never run on a plan made for another subject list."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from tocsin.cli.daemon import PARSE_APART_FROM_BYTES, reload_settings
from tocsin.config import ConfigError, Settings, load
from tocsin.reparse import ReparseFailed, child, rebuild, reparse

TOKEN = "reparse-test-token-value"


def config(devices: dict[str, str], *, integration_url: str = "http://127.0.0.1:9/ok") -> str:
    lines = [
        "[[orgs]]",
        'slug = "acme"',
        'name = "Acme"',
        "[[orgs.tokens]]",
        'name = "ops"',
        'scope = "write"',
        'token_file = "token"',
    ]
    for device_id, url in devices.items():
        lines += [
            "[[devices]]",
            'org = "acme"',
            f'id = "{device_id}"',
            f'name = "Device {device_id}"',
            f'probe = {{ type = "http", url = "{url}" }}',
        ]
    lines += [
        "[[integrations]]",
        'org = "acme"',
        'id = "crm"',
        'name = "CRM"',
        f'check = {{ type = "http", url = "{integration_url}", '
        'auth = { bearer_file = "token" } }',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text(TOKEN)
    file = tmp_path / "tocsin.toml"
    file.write_text(
        config({"a": "http://127.0.0.1:9/a", "b": "http://127.0.0.1:9/b", "c": "http://x/c"})
    )
    return file


def running(path: Path) -> Settings:
    return load(path, keep_source=True)


def write(path: Path, text: str | None) -> None:
    """Write the file, or remove it (None): synchronous, as an operator's editor would."""
    if text is None:
        path.unlink()
    else:
        path.write_text(text)


async def test_unchanged_subjects_are_the_running_objects(path: Path) -> None:
    old = running(path)
    # b changed, c removed, d added; a and the integration unchanged
    write(
        path, config({"a": "http://127.0.0.1:9/a", "b": "http://127.0.0.1:9/B", "d": "http://x/d"})
    )
    new = await reparse(path, old)
    devices = {d.id: d for d in new.config.devices}
    assert list(devices) == ["a", "b", "d"]
    assert devices["a"] is old.config.devices[0]
    assert devices["b"] is not old.config.devices[1]
    assert devices["b"].probe == load(path).config.devices[1].probe  # the new probe
    assert new.config.integrations[0] is old.config.integrations[0]
    # everything else as a parse in the daemon would have it
    assert new.config == load(path).config
    assert new.tokens == old.tokens
    assert new.tokens[0].sha256 == hashlib.sha256(TOKEN.encode()).digest()
    assert new.store_url == old.store_url
    assert new.base_dir == path.parent
    # and the next reload compares with this text
    assert new.source
    assert new.source != old.source
    again = await reparse(path, new)
    assert [a is b for a, b in zip(again.config.devices, new.config.devices, strict=True)] == [
        True,
        True,
        True,
    ]


async def test_an_invalid_or_missing_file_is_refused_with_its_key_path(path: Path) -> None:
    old = running(path)
    write(path, config({"a": "http://127.0.0.1:9/a"}) + "\n[monitor]\nintervall = 3\n")
    with pytest.raises(ConfigError) as caught:
        await reparse(path, old)
    assert [str(p) for p in caught.value.problems] == ["monitor.intervall: unknown key"]
    write(path, None)
    with pytest.raises(ConfigError, match="cannot read"):
        await reparse(path, old)


async def test_a_secret_read_again_on_reload(path: Path) -> None:
    old = running(path)
    write(path.parent / "token", "a-rotated-token-value")
    new = await reparse(path, old)
    assert new.tokens[0].sha256 == hashlib.sha256(b"a-rotated-token-value").digest()
    write(path.parent / "token", None)
    with pytest.raises(ConfigError, match=r"orgs\[0\]\.tokens\[0\]\.token_file: cannot read"):
        await reparse(path, old)


def test_a_plan_for_another_subject_list_is_not_applied(path: Path) -> None:
    old = running(path)
    answer = child(str(path), old.source)
    assert answer[0] == "ok"
    assert answer[2] == [0, 1, 2]
    assert answer[3] == [0]
    assert pickle.loads(pickle.dumps(answer))[1].environ == {}  # the daemon's own env is used
    other = load(path)
    other.config.devices.reverse()
    with pytest.raises(ReparseFailed, match="not the ones the child read"):
        rebuild(other, answer)


async def test_without_the_running_text_it_parses_in_the_daemon(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Settings without their text (made by hand, or by an older daemon): the child cannot
    tell what changed, the plan does not match, and the daemon parses the file itself."""
    old = load(path)
    assert old.source == b""
    with pytest.raises(ReparseFailed):
        await reparse(path, old)
    structlog.configure(logger_factory=structlog.stdlib.LoggerFactory())
    try:
        with caplog.at_level(logging.WARNING):
            new = await reload_settings(path, old)
    finally:
        structlog.reset_defaults()
    assert new is not None
    assert new.config == old.config
    assert new.source
    assert "the child parse failed" in caplog.text
    assert TOKEN not in caplog.text


def test_a_large_config_is_parsed_apart_with_equal_values_shared(tmp_path: Path) -> None:
    """At start a config of thousands of subjects is parsed in a child process, as a reload's
    is: the same settings as a parse here (secrets read, relative paths resolved), and one
    object for each equal value (the daemon held 28 MiB of equal strings at 100,000). Run in a
    process of its own, as `tocsin run` does it: before the daemon has any thread."""
    (tmp_path / "token").write_text(TOKEN)
    path = tmp_path / "tocsin.toml"
    path.write_text(config({f"cam-{n}": f"http://127.0.0.1:9/{n}" for n in range(3_000)}))
    assert path.stat().st_size >= PARSE_APART_FROM_BYTES
    script = f"""
import json, sys
from tocsin.config import load
from tocsin.reparse import parse_at_start
path = {str(path)!r}
apart = parse_at_start(path)
here = load(path, keep_source=True)
devices = apart.config.devices
print(json.dumps({{
    "same_config": apart.config == here.config,
    "same_tokens": apart.tokens == here.tokens,
    "same_rest": (apart.store_url, str(apart.base_dir), apart.source)
        == (here.store_url, str(here.base_dir), here.source),
    "orgs": len({{id(d.org) for d in devices}}),
    "types": len({{id(d.probe.type) for d in devices}}),
    "labels": len({{id(d.labels) for d in devices}}),
    "orgs_here": len({{id(d.org) for d in here.config.devices}}),
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {
        "same_config": True,
        "same_tokens": True,
        "same_rest": True,
        "orgs": 1,
        "types": 1,
        "labels": 1,
        "orgs_here": seen["orgs_here"],
    }
    assert seen["orgs_here"] > 1  # a parse here shares none


def test_a_large_invalid_config_is_refused_with_its_key_path(tmp_path: Path) -> None:
    """`tocsin run` on a config of thousands of subjects with a mistake: said the same way as
    for a small one (the key path, no traceback), and nothing starts."""
    (tmp_path / "token").write_text(TOKEN)
    path = tmp_path / "tocsin.toml"
    devices = {f"cam-{n}": f"http://127.0.0.1:9/{n}" for n in range(3_000)}
    devices["cam-17"] = "ftp://nowhere"
    path.write_text(config(devices))
    assert path.stat().st_size >= PARSE_APART_FROM_BYTES
    with pytest.raises(ConfigError) as here:
        load(path)

    done = subprocess.run(
        [sys.executable, "-m", "tocsin", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert f"{path}: invalid config" in done.stderr
    said = [line.strip() for line in done.stderr.splitlines()[1:] if line.strip()]
    assert said == [str(p) for p in here.value.problems]
    assert said[0].startswith("devices[17].probe")
