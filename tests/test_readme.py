"""The README stays true to the code. Every key, kind, parameter, shipped spec and flag is
in the generated reference (docs/reference/, tests/test_reference.py); here: the README
and its proposed front door (docs/README_front_door.md) name every command, keep the same
quick start, and link only to files that exist."""

import re

import pytest

from helpers import ROOT
from pyro_vae.cli import build_parser
from test_reference import anchors

README = ROOT / "README.md"
FRONT_DOOR = ROOT / "docs" / "README_front_door.md"


def _quick_start(text: str) -> str:
    return text.split("## Quick start")[1].split("```bash")[1].split("```")[0]


@pytest.mark.parametrize("page", [README, FRONT_DOOR], ids=["README", "front_door"])
def test_every_command_is_named(page):
    text = page.read_text()
    for command in build_parser()._subparsers._group_actions[0].choices:
        assert f"pyro-vae {command}" in text, command


def test_the_front_door_keeps_the_quick_start():
    quick_start = _quick_start(README.read_text())
    assert "pyro-vae train" in quick_start and "pytest" in quick_start
    assert _quick_start(FRONT_DOOR.read_text()) == quick_start


def test_the_front_door_links_resolve():
    """Its links are written from the root, where it will stand as the README; each names a
    file that exists and, with #anchor, one of that page's headings."""
    text = FRONT_DOOR.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", text)
    assert any(t.startswith("docs/") for t, _ in targets)
    broken = [f"{t}#{a}" for t, a in targets if not re.match(r"[a-z]+://", t)
              and (not (ROOT / t).exists() or (a and t.endswith(".md") and a not in anchors(ROOT / t)))]
    assert not broken, broken
