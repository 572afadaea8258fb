from __future__ import annotations

import pytest

from worker.names import relative_name_problem


@pytest.mark.parametrize(
    "name", ["model.safetensors", "sd/v1-5.ckpt", "my model (v2).safetensors", "input.png", "a/b/c.png"]
)
def test_accepts_relative_names(name: str) -> None:
    assert relative_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x.safetensors", "'..'"),
        ("a/../../x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("~/x", "absolute"),
        ("C:/Windows/x", "absolute"),
        ("a\\b", "backslash"),
        ("", "empty"),
        ("a//b", "empty path part"),
        ("a\x00b", "control"),
        (12, "string"),
        ("x" * 300, "255"),
    ],
)
def test_refuses_escaping_or_odd_names(name: object, reason: str) -> None:
    problem = relative_name_problem(name)
    assert problem is not None and reason in problem
