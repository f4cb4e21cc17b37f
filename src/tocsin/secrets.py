"""Secrets from files or environment variables, never inline in the config.

Errors say which file or variable failed and why, never the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class SecretError(ValueError):
    """A secret could not be read; the message names the file or variable, not the value."""


def read_secret(
    *,
    file: str | None = None,
    env: str | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str],
) -> str:
    """The secret from `file` (relative to `base_dir`) or from the variable `env`, stripped."""
    if (file is None) == (env is None):
        raise SecretError("give exactly one of a *_file or a *_env key")
    if env is not None:
        value = environ.get(env, "").strip()
        if not value:
            raise SecretError(f"environment variable {env} is not set or empty")
        return value
    assert file is not None
    path = Path(file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise SecretError(f"cannot read {path} (not UTF-8 text)") from None
    if not value:
        raise SecretError(f"{path} is empty")
    return value
