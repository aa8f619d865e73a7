"""The README stays true to the code. Every key, kind, parameter, shipped spec and flag is
in the generated reference (docs/reference/, tests/test_reference.py); here: the README, the
front door, names every command, keeps the two-command quick start (install and run the
main job; run the tests), and links only to files and headings that exist."""

import re

from helpers import ROOT
from pyro_vae.cli import build_parser
from test_reference import anchors

README = ROOT / "README.md"


def _quick_start(text: str) -> str:
    return text.split("## Quick start")[1].split("```bash")[1].split("```")[0]


def test_every_command_is_named():
    text = README.read_text()
    for command in build_parser()._subparsers._group_actions[0].choices:
        assert f"pyro-vae {command}" in text, command


def test_the_quick_start_is_two_commands_install_and_train_then_the_tests():
    commands = [line.split("#")[0].strip() for line in _quick_start(README.read_text()).strip().splitlines()]
    commands = [c for c in commands if c]
    assert len(commands) == 2, commands
    assert "pip install" in commands[0] and "pyro-vae train" in commands[0]
    assert commands[1] == "python -m pytest"


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) < 200  # the guides and the reference are in docs/


def test_the_readme_links_resolve():
    """Each link names a file that exists and, with #anchor, one of that page's headings."""
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", text)
    assert any(t.startswith("docs/") for t, _ in targets)
    broken = [f"{t}#{a}" for t, a in targets if not re.match(r"[a-z]+://", t)
              and (not (ROOT / t).exists() or (a and t.endswith(".md") and a not in anchors(ROOT / t)))]
    assert not broken, broken
