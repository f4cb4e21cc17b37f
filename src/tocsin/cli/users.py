"""`tocsin users hash`: the argon2 hash of a web sign-in password, for `password_argon2` in
[[orgs.users]]. The password is read from the terminal (hidden, asked twice) or from stdin, so it
never appears on a command line, in the shell's history or on stdout."""

from __future__ import annotations

import sys

import click
from argon2 import PasswordHasher
from argon2.exceptions import HashingError

from tocsin.cli.base import fail, main


@main.group()
def users() -> None:
    """Web sign-in users: [[orgs.users]] in the config."""


def _read_password() -> str:
    if sys.stdin.isatty():
        # err=True: the prompts go to stderr (the typing to the terminal), stdout is the hash's.
        password: str = click.prompt(
            "Password", hide_input=True, confirmation_prompt=True, err=True
        )
        return password
    try:
        line = sys.stdin.readline()
    except UnicodeDecodeError:
        fail("stdin: the password is not UTF-8 text")
    # Only the line's end goes: spaces may be part of the password.
    return line.removesuffix("\n").removesuffix("\r")


@users.command("hash")
def users_hash() -> None:
    """Print the argon2id hash of a password: asked for twice on a terminal, else the first line
    of stdin (`printf %s "$PW" | tocsin users hash`)."""
    password = _read_password()
    if not password:
        fail("the password is empty: give one on the first line of stdin, or run in a terminal")
    try:
        encoded = PasswordHasher().hash(password)
    except HashingError as exc:
        fail(f"could not hash the password: {exc}", 1)
    click.echo(encoded)
