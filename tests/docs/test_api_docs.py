"""docs/api.md is what scripts/gen_api_docs.py writes from the docstrings, so CI fails on a stale API page; and it
has a heading for every name ``import lenvm_rl`` exports."""

from __future__ import annotations

import importlib.util
import re

import pytest

import lenvm_rl

from .conftest import REPO

SCRIPT = REPO / "scripts" / "gen_api_docs.py"
API_MD = REPO / "docs" / "api.md"


@pytest.fixture(scope="module")
def gen_api_docs():
    spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_md_is_up_to_date(gen_api_docs, capsys):
    status = gen_api_docs.main(["--check"])
    err = capsys.readouterr().err
    assert status == 0, err  # the message says: docs/api.md is stale: run python scripts/gen_api_docs.py


def test_check_mode_reports_a_stale_file(gen_api_docs, tmp_path):
    stale = tmp_path / "api.md"
    stale.write_text(API_MD.read_text(encoding="utf-8").replace("### `LenVM`\n", "### `LenVM2`\n", 1))
    problem = gen_api_docs.check(stale)
    assert problem is not None and problem.startswith(gen_api_docs.STALE)
    assert "-### `LenVM2`" in problem and "+### `LenVM`" in problem  # and shows the diff


def test_every_top_level_export_has_a_heading():
    headings = set(re.findall(r"^#{2,3} `([^`]+)`", API_MD.read_text(encoding="utf-8"), flags=re.M))
    missing = [name for name in lenvm_rl.__all__ if name not in headings]
    assert not missing, f"docs/api.md has no heading for {missing}: run python scripts/gen_api_docs.py"
