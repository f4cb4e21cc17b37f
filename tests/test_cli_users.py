"""`tocsin users hash`: a password from stdin or a terminal -> its argon2id hash on stdout."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner, Result

from tocsin.cli import main
from tocsin.config import parse

PASSWORD = "correct horse battery staple"


def hash_from(stdin: str) -> Result:
    return CliRunner().invoke(main, ["users", "hash"], input=stdin, env={"TOCSIN_CONFIG": None})


def printed_hash(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stdout.endswith("\n")
    [encoded] = result.stdout.splitlines()
    return encoded


def test_it_prints_the_argon2id_hash_of_the_password_on_stdin() -> None:
    result = hash_from(PASSWORD + "\n")
    encoded = printed_hash(result)
    assert encoded.startswith("$argon2id$")
    assert PasswordHasher().verify(encoded, PASSWORD)
    assert PASSWORD not in result.stdout + result.stderr


def test_it_prints_a_hash_the_config_accepts() -> None:
    encoded = printed_hash(hash_from(PASSWORD + "\n"))
    text = (
        '[[orgs]]\nslug = "acme"\nname = "Acme"\n'
        f"[[orgs.users]]\nname = 'ann'\nrole = 'write'\npassword_argon2 = '{encoded}'\n"
    )
    [acme] = parse(text, env={}).config.orgs
    assert acme.users[0].password_argon2 == encoded


@pytest.mark.parametrize(
    ("stdin", "password"),
    [
        pytest.param("  spaced out \n", "  spaced out ", id="spaces-kept"),
        pytest.param("no newline", "no newline", id="no-newline"),
        pytest.param("crlf\r\n", "crlf", id="crlf"),
        pytest.param("first\nsecond\n", "first", id="first-line-only"),
    ],
)
def test_it_takes_the_first_line_of_stdin_without_its_end(stdin: str, password: str) -> None:
    assert PasswordHasher().verify(printed_hash(hash_from(stdin)), password)


def test_it_salts_every_hash() -> None:
    assert printed_hash(hash_from(PASSWORD)) != printed_hash(hash_from(PASSWORD))


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"], ids=["eof", "newline", "crlf"])
def test_it_refuses_an_empty_password(stdin: str) -> None:
    result = hash_from(stdin)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "the password is empty" in result.stderr


# -- on a terminal -----------------------------------------------------------------------------


def test_it_asks_twice_on_a_terminal_and_prints_only_the_hash() -> None:
    """A real pseudo-terminal as stdin: hidden prompts on stderr, a mismatch asked again."""
    master, terminal = pty.openpty()
    # A new session has no controlling terminal: getpass then prompts on stderr and reads the
    # pty (stdin), not whatever terminal runs the tests.
    process = subprocess.Popen(
        [sys.executable, "-c", "from tocsin.cli import main; main()", "users", "hash"],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    errors = b""

    def answer_when_asked(prompt: bytes, count: int, line: str) -> None:
        # getpass turns echo off (discarding what was typed early) before it prompts: answer
        # only once the prompt is out.
        nonlocal errors
        deadline = time.monotonic() + 30
        while errors.count(prompt) < count:
            assert process.stderr is not None
            left = deadline - time.monotonic()
            assert left > 0, f"no {prompt!r} prompt: {errors!r}"
            if select.select([process.stderr], [], [], left)[0]:
                chunk = os.read(process.stderr.fileno(), 4096)
                assert chunk, f"stderr closed before {prompt!r}: {errors!r}"
                errors += chunk
        os.write(master, line.encode() + b"\n")

    try:
        answer_when_asked(b"Password: ", 1, PASSWORD)
        answer_when_asked(b"Repeat for confirmation: ", 1, "a typo")
        answer_when_asked(b"Password: ", 2, PASSWORD)
        answer_when_asked(b"Repeat for confirmation: ", 2, PASSWORD)
        stdout, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(terminal)
    errors += rest
    assert process.returncode == 0, errors
    [encoded] = stdout.decode().splitlines()
    assert PasswordHasher().verify(encoded, PASSWORD)
    assert b"do not match" in errors
    assert PASSWORD.encode() not in stdout + errors
