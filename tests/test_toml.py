"""tocsin.toml reads TOML as tomllib does: the same values and types, the same refusals and
the same messages, only faster."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tocsin import toml
from tocsin.config import ConfigError, parse

EVERY_KIND = """\
title = "a \\"basic\\" string\\twith escapes \\u00e9"
literal = 'C:\\path'
multi = \"\"\"
two \\
  lines\"\"\"
int = 1_000
hex = 0xff
negative = -7
float = 2.5e-3
infinite = -inf
yes = true
empty = []
mixed = [1, "two", [3.0], { four = 4 }]
inline = { a = 1, b.c = "d" }
when = 1979-05-27T07:32:00-08:00
day = 1979-05-27
[table."quoted key"]
x = 1
[[tables]]
n = 1
[[tables]]
n = 2
[tables.sub]
deep = [{ k = "v" }]
"""


def kinds(value: Any) -> Any:
    """The value with every type spelled out, so that 1 == 1.0 == True cannot hide a difference."""
    if isinstance(value, dict):
        return (type(value), [(k, kinds(v)) for k, v in value.items()])
    if isinstance(value, list):
        return (type(value), [kinds(v) for v in value])
    return (type(value), repr(value))


def test_it_reads_every_kind_of_value_as_tomllib_does() -> None:
    assert kinds(toml.loads(EVERY_KIND)) == kinds(tomllib.loads(EVERY_KIND))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('[server\nlisten = "x"\n', id="unclosed-header"),
        pytest.param("a = 1\nb = \n", id="missing-value"),
        pytest.param("a = 1\na = 2\n", id="duplicate-key"),
        pytest.param("[a]\n[a]\n", id="duplicate-table"),
        pytest.param('a = "open\n', id="unclosed-string"),
        pytest.param("a = 01\n", id="leading-zero"),
        pytest.param("a = { x = 1, }\n", id="trailing-comma-toml-1.1"),
        pytest.param("a = {\n  x = 1\n}\n", id="newline-in-inline-table-toml-1.1"),
        pytest.param('a = "\\e"\n', id="escape-e-toml-1.1"),
        pytest.param("\ufeffa = 1\n", id="byte-order-mark"),
    ],
)
def test_it_refuses_what_tomllib_refuses_in_tomllibs_words(text: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as expected:
        tomllib.loads(text)
    with pytest.raises(toml.TOMLDecodeError) as caught:
        toml.loads(text)
    assert str(caught.value) == str(expected.value)


def test_a_config_that_is_not_toml_is_reported_with_tomllibs_line_and_column() -> None:
    text = '[server]\nlisten = "127.0.0.1:8080"\npublic_url = \n'
    with pytest.raises(ConfigError) as caught:
        parse(text, env={})
    [problem] = caught.value.problems
    assert problem.path == ""
    assert problem.message == "not valid TOML: Invalid value (at line 3, column 14)"
