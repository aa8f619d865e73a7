"""Parameter types and parsing shared by the spec and the components' constructors:
one positive-count type (``count(n)``: 1..n), one positive float, and one reader of a
command-line value (TOML, else a plain string)."""

from __future__ import annotations

import tomllib
from typing import Annotated, Any

from pydantic import Field

from .errors import SpecError

NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def count(at_most: int):
    """A whole number in 1..at_most."""
    return Annotated[int, Field(gt=0, le=at_most)]


def toml_value(text: str) -> Any:
    """``32`` -> 32, ``[400,400]`` -> [400, 400], ``true`` -> True; anything that is not a
    TOML value (``vamp``, a path) is the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:  # tomllib reads nested arrays recursively
        raise SpecError(f"{text[:40]}...: arrays or tables nested too deeply; a spec value nests a few levels") from None
