"""The docs' snippets that use the client integrations, run as docs/simulator.md says (their
packages are in this session's extra; tests/test_docs.py runs every other snippet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_docs import run_snippet, snippets


@pytest.mark.parametrize("source", snippets(integrations=True))
def test_integration_snippet(source: str, tmp_path: Path) -> None:
    run_snippet(source, tmp_path)
