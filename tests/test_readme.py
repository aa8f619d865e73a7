"""The README stays true to the code: every kind, parameter, key, shipped spec and command."""

import re

from helpers import ROOT
from pyro_vae.cli import build_parser
from pyro_vae.spec import SLOTS, DataSpec, ModelSpec, Schedule, shipped

README = (ROOT / "README.md").read_text()


def test_every_kind_and_parameter_is_documented():
    for registry in SLOTS.values():
        for info in registry.describe():
            assert f"`{info.name}`" in README, f"{registry.slot} kind {info.name} missing from the README"
            for parameter in info.parameters:
                assert f"`{parameter.name}`" in README or parameter.name in README, f"{info.name}.{parameter.name}"


def test_every_spec_key_is_documented_with_its_default():
    for model in (ModelSpec, Schedule, DataSpec):
        for key, field in model.model_fields.items():
            assert f"`{key}`" in README, key
    section = README.split("**Schedule**")[1].split("###")[0]
    for key, field in Schedule.model_fields.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{key}` |"))
        documented = row.split("|")[2].strip().strip("`").strip('"')
        assert documented.lower() in (str(field.default).lower(), f"{field.default:g}" if isinstance(field.default, (int, float)) else ""), (key, row)


def test_every_shipped_spec_and_command_is_listed():
    for which in ("models", "inference"):
        for name in shipped(which):
            assert f"`{name}`" in README, name
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in commands:
        assert f"pyro-vae {command}" in README, command
    for flag in re.findall(r"--[a-z][a-z-]+", " ".join(a for c in commands.values() for a in c.format_usage().split())):
        assert flag in README, flag
