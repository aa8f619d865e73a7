"""The generated reference (docs/reference/spec.md, cli.md) is up to date with the code, and
what it says is read back from the files and checked against the registries, the spec's
pydantic models and the parsers themselves."""

import argparse
import inspect
import re
import tomllib

import pytest

from helpers import ROOT
from pyro_vae import reference
from pyro_vae.cli import build_parser
from pyro_vae.model.priors import PRIORS, Prior
from pyro_vae.params import count
from pyro_vae.spec import SLOTS, shipped, spec_summary

DOCS = ROOT / "docs" / "reference"
REGENERATE = f"out of date: run `{reference.COMMAND}` and commit docs/reference"


def test_spec_reference_is_up_to_date():
    assert (DOCS / "spec.md").read_text() == reference.spec_reference(), f"docs/reference/spec.md is {REGENERATE}"


def test_cli_reference_is_up_to_date():
    assert (DOCS / "cli.md").read_text() == reference.cli_reference(), f"docs/reference/cli.md is {REGENERATE}"


class _NewPrior(Prior):
    """A prior registered after the reference was written."""

    def __init__(self, latent_dim: int, *, width: count(9) = 3):
        super().__init__()


def test_a_registry_change_makes_the_reference_stale(monkeypatch, tmp_path):
    assert reference.main(["--check"]) == 0
    monkeypatch.setitem(PRIORS._classes, "new_prior", _NewPrior)
    monkeypatch.setitem(reference.MEANINGS, "prior.width", "the new prior's width")
    assert reference.stale() == ["spec.md"]
    assert reference.main(["--check"]) == 1
    assert "| `width` | int > 0, <= 9 | `3` | the new prior's width |" in reference.spec_reference()
    assert reference.main(["--out", str(tmp_path)]) == 0  # regenerating makes it current again
    assert reference.main(["--check", "--out", str(tmp_path)]) == 0
    assert "#### `new_prior`" in (tmp_path / "spec.md").read_text()


def test_a_key_or_parameter_without_a_meaning_is_refused(monkeypatch):
    with monkeypatch.context() as patch:
        patch.delitem(reference.MEANINGS, "inference.schedule.beta")
        with pytest.raises(reference.MissingMeaning, match="inference.schedule.beta"):
            reference.spec_reference()
    monkeypatch.setitem(PRIORS._classes, "new_prior", _NewPrior)
    with pytest.raises(reference.MissingMeaning, match="prior.width"):
        reference.spec_reference()


def _sections(text: str, level: str) -> dict[str, str]:
    """Heading text -> the section's body, for headings of exactly ``level`` (e.g. '###')."""
    parts = re.split(rf"^{level} (.+)$", text, flags=re.M)
    return {parts[i].strip("` "): parts[i + 1] for i in range(1, len(parts), 2)}


def _rows(section: str) -> dict[str, list[str]]:
    """First cell (unquoted) -> the row's cells, for the table rows of a section."""
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0].strip("`")] = cells
    return rows


def _toml(cell: str):
    """A default cell read back as TOML (None for 'unset')."""
    return None if cell == "unset" else tomllib.loads(f"v = {cell.strip('`')}")["v"]


def test_every_kind_and_parameter_is_documented_with_its_type_and_default():
    kinds = _sections((DOCS / "spec.md").read_text().split("## Kinds, per slot")[1].split("## Shipped")[0], "###")
    assert set(kinds) == set(SLOTS)
    for slot, registry in SLOTS.items():
        sections = _sections(kinds[slot], "####")
        assert set(sections) == set(registry.names()), slot
        for info in registry.describe():
            rows = _rows(sections[info.name])
            assert set(rows) == {p.name for p in info.parameters}, (slot, info.name)
            for p in info.parameters:
                name, type_, default, meaning = rows[p.name]
                assert type_.replace("\\|", "|") == p.type
                assert meaning, (slot, info.name, p.name)
                if p.default is inspect.Parameter.empty:
                    assert default == "required"
                else:
                    assert _toml(default) == p.default, (slot, info.name, p.name, default)


def test_every_spec_key_is_documented_with_its_default():
    tables = _sections((DOCS / "spec.md").read_text().split("## Kinds, per slot")[0], "##")
    for heading, _, model in reference.TABLES:
        rows = _rows(tables[heading.strip("`")])
        assert set(rows) == set(model.model_fields), heading
        for key, field in model.model_fields.items():
            default = rows[key][2]
            if field.is_required():
                assert default == "required", key
            elif default != "(the table below)":
                assert _toml(default) == field.get_default(call_default_factory=True), (heading, key, default)
    assert "tracking" in _rows(tables["[tracking]"])


def test_every_slot_key_names_its_slot():
    """A key whose value is a kind's table is listed in SLOT_KEYS with its slot (so the
    reference says which kinds it takes)."""
    for _, table, model in reference.TABLES:
        for key, field in model.model_fields.items():
            if "dict[str, Any]" in str(field.annotation):
                assert reference.SLOT_KEYS.get(f"{table}.{key}") in SLOTS, f"{table}.{key}"


def test_every_shipped_spec_is_listed_with_its_whole_description():
    text = (DOCS / "spec.md").read_text()
    for which in ("models", "inference"):
        for name, path in shipped(which).items():
            assert f"| `{name}` | {spec_summary(path).replace('|', chr(92) + '|')} |" in text, name
    # a description over several comment lines is read whole (it was cut after the first)
    assert spec_summary(shipped("models")["hvae"]).endswith("100-100 to z2 (50)")


def test_every_command_and_flag_is_documented_with_its_default():
    sections = _sections((DOCS / "cli.md").read_text(), "##")
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(sections) == {f"pyro-vae {name}" for name in commands}
    for name, parser in commands.items():
        rows = _rows(sections[f"pyro-vae {name}"])
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            key = action.option_strings[0] if action.option_strings else action.metavar
            assert key in rows, (name, key)
            row = rows[key]
            assert ", ".join(f"`{o}`" for o in action.option_strings) in (row[0], "")
            if action.required or not action.option_strings:
                assert row[2] == "required", (name, key)
            elif action.nargs != 0 and action.default not in (None, []):
                assert row[2] == f"`{action.default}`", (name, key)
            assert "%(" not in row[3], (name, key)  # argparse's placeholders expanded


def anchors(page) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (lowercased, punctuation dropped, spaces -> -)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_relative_link_in_the_docs_resolves():
    """Every link between the pages of docs/ names a file that exists and, with #anchor, one of its headings."""
    pages = list((ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 4
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)]*))?\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path = (page.parent / target) if target else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, "\n".join(broken)
