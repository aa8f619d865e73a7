"""The cells of a comparison: axes of the spec (``--vary PATH=V1,V2,...``), crossed or
zipped into cells, each a complete spec with a readable label.

An axis names any key of the resolved spec. A value of a slot's table (``model.prior``,
``inference.estimator``: a table with a ``kind``) is written ``kind[:key=value...]`` and
replaces the table, e.g. ``iwae:k=5`` or ``mixture:components=10``; a ``.kind`` key
replaces the table with that kind's defaults (the old kind's parameters belong to it);
any other value is a TOML value, else a plain string, as with ``--set``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..errors import SpecError
from ..params import toml_value
from ..spec import Spec, apply_overrides, lookup


@dataclass(frozen=True)
class Axis:
    """One varied key of the spec and its values, as written; ``flag`` is the parameter
    that gave it (``vary``, or ``estimators`` for the estimator shorthand)."""

    path: str
    values: tuple[str, ...]
    flag: str = "vary"

    @property
    def name(self) -> str:
        """The key's own name, for labels and table headers: ``model.prior.kind`` -> prior."""
        parts = self.path.split(".")
        return parts[-2] if parts[-1] == "kind" and len(parts) > 1 else parts[-1]


@dataclass
class Cell:
    """One combination of the axes' values: ``values`` maps each axis path to its value."""

    label: str
    values: dict
    spec: Spec


def split_values(text: str) -> list[str]:
    """Comma-separated values, commas inside brackets kept: ``[300,300],[500]`` -> two."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return [v for v in values if v]


def parse_axis(text: str, flag: str = "vary") -> Axis:
    """``PATH=V1,V2,...`` -> Axis."""
    path, sep, rest = text.partition("=")
    path = path.strip()
    if not sep or not path or any(not part for part in path.split(".")):
        raise SpecError(f"${flag} {text!r}: expected KEY=VALUE,VALUE,..., e.g. model.prior.kind=standard_normal,vamp")
    values = split_values(rest)
    if not values:
        raise SpecError(f"${flag} {text!r}: give one or more values, comma-separated")
    return Axis(path, tuple(values), flag)


def estimator_axis(text: str) -> Axis:
    """``--estimators LIST``: the shorthand of ``--vary inference.estimator=LIST``."""
    values = split_values(text)
    if not values or len(set(values)) != len(values):
        raise SpecError(f"$estimators {text!r}: give one or more distinct estimators, comma-separated")
    return Axis("inference.estimator", tuple(values), "estimators")


def parse_table(text: str, flag: str = "vary") -> dict:
    """``iwae:k=5:alpha=0.5`` -> {"kind": "iwae", "k": 5, "alpha": 0.5}."""
    kind, *settings = text.split(":")
    table: dict = {"kind": kind.strip()}
    if not table["kind"]:
        raise SpecError(f"${flag} {text!r}: expected kind:key=value, e.g. iwae:k=5")
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise SpecError(f"${flag} {text!r}: expected kind:key=value, e.g. iwae:k=5")
        table[key.strip()] = toml_value(value)
    return table


def _is_table(raw: dict, axis: Axis) -> bool:
    """Whether the axis names a slot's table (its values are ``kind[:key=value...]``)."""
    value = lookup(raw, axis.path.split("."))
    return isinstance(value, dict) and "kind" in value


def _apply(raw: dict, axis: Axis, value: str) -> None:
    if _is_table(raw, axis):
        *parents, last = axis.path.split(".")
        lookup(raw, parents)[last] = parse_table(value, axis.flag)
    else:
        apply_overrides(raw, [f"{axis.path}={value}"])


def _label_part(raw: dict, axis: Axis, value: str) -> str:
    """A kind reads as itself (``vamp``, ``iwae:k=5``); another value with its key (``latent_dim=32``)."""
    return value if axis.path.endswith(".kind") or _is_table(raw, axis) else f"{axis.name}={value}"


def plan_cells(base: Spec, axes: list[Axis], zip_axes: bool = False) -> list[Cell]:
    """Every cell of the axes (their cross product, or element-wise with ``zip_axes``),
    each validated as a spec before anything is trained."""
    paths = [axis.path for axis in axes]
    if len(set(paths)) != len(paths):
        raise SpecError(f"$vary: {', '.join(sorted({p for p in paths if paths.count(p) > 1}))} is given twice; "
                        "give each key once, with all its values")
    repeated = [axis for axis in axes if len(set(axis.values)) != len(axis.values)]
    if repeated and not zip_axes:  # zipped, a value may recur beside different ones
        raise SpecError(f"${repeated[0].flag} {repeated[0].path}: give distinct values (a value twice is "
                        "the same cell twice)")
    if zip_axes and len({len(axis.values) for axis in axes}) > 1:
        counts = ", ".join(f"{axis.path}: {len(axis.values)}" for axis in axes)
        raise SpecError(f"$zip pairs the values element-wise, so every axis needs as many ({counts}); "
                        "give each the same number, or leave out $zip for the cross product")
    combos = list(zip(*(axis.values for axis in axes))) if zip_axes else list(itertools.product(*(a.values for a in axes)))
    shown = [axis for axis in axes if len(set(axis.values)) > 1] or axes  # the label shows the values that differ
    cells = []
    for combo in combos:
        raw = base.to_dict()
        values = dict(zip(paths, combo))
        label = "+".join(_label_part(raw, axis, values[axis.path]) for axis in shown)
        for axis in axes:
            _apply(raw, axis, values[axis.path])
        try:
            spec = Spec.from_dict(raw)
        except SpecError as exc:
            flags = "$estimators" if all(axis.flag == "estimators" for axis in axes) else "$vary"
            raise SpecError(f"{flags} {label}: {exc}") from None
        cells.append(Cell(label, values, spec))
    labels = [cell.label for cell in cells]
    if len(set(labels)) != len(labels):
        raise SpecError(f"$vary: two cells read alike ({', '.join(sorted({l for l in labels if labels.count(l) > 1}))}); "
                        "give values that differ")
    return cells
