"""Config paths stay under the study directory unless the config allows otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from physfm.paths import PathPolicyError, check_config_path


def test_relative_paths_resolve_under_the_study(tmp_path: Path) -> None:
    assert check_config_path("results", "results", base=tmp_path) == tmp_path / "results"
    assert check_config_path("a/../b", "results", base=tmp_path) == tmp_path / "a/../b"


@pytest.mark.parametrize("value", ["/etc", "../outside", "results/../../x"])
def test_escapes_are_refused_with_the_key_and_the_fix(tmp_path: Path, value: str) -> None:
    with pytest.raises(PathPolicyError) as err:
        check_config_path(value, "data.input", base=tmp_path)
    assert "data.input" in str(err.value) and "allow_absolute_paths: true" in str(err.value)


def test_explicit_permission_allows_absolute_paths(tmp_path: Path) -> None:
    assert check_config_path("/data/jetclass/*.root", "data.input", base=tmp_path, allow_absolute=True) == Path(
        "/data/jetclass/*.root"
    )
