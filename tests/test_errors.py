"""pyro_vae.errors: a library message names a caller's parameter as ``$name``, which prints
as the Python parameter (``str``) and as the flag on the command line."""

import io
import re
import tokenize
from pathlib import Path

import pyro_vae
from pyro_vae.errors import TERMS, RunError


def test_a_parameter_prints_in_library_terms_and_as_its_flag():
    error = RunError("$out /tmp/run: already holds files; pass $force to replace them, or $zip; $n of them")
    assert str(error) == "out /tmp/run: already holds files; pass force=True to replace them, or zip_axes=True; n of them"
    assert error.for_command_line() == "--out /tmp/run: already holds files; pass --force to replace them, or --zip; --n of them"
    assert error.template.startswith("$out /tmp/run")


def test_any_other_dollar_is_left_as_it_is():
    error = RunError("$outside /data/$$x $HOME costs $5: $Out")
    assert str(error) == error.for_command_line() == "$outside /data/$$x $HOME costs $5: $Out"


def test_no_message_spells_a_parameter_in_braces():
    """The library's strings name parameters as $name: no f-string needs {{name}} escapes."""
    braces = re.compile(r"\{\{?(" + "|".join(TERMS) + r")\}\}?")
    found = []
    for path in Path(pyro_vae.__file__).parent.rglob("*.py"):
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type != tokenize.STRING:
                continue
            f_string = "f" in re.match(r"[a-zA-Z]*", token.string).group(0).lower()
            for match in braces.finditer(token.string):
                if not f_string or match.group(0).startswith("{{"):  # in an f-string {out} is a variable
                    found.append(f"{path.name}:{token.start[0]} {match.group(0)}")
    assert not found, found
