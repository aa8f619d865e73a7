"""Covariates: observed per-example inputs c that the model conditions on (``data.covariates``).

Every reader returns each named covariate's raw values per split (:class:`~.readers.RawData`
``covariates``: npz arrays ``<split>_<name>``, an ``.npy``'s sibling ``<stem>.<name>.npy``,
CSV/TSV columns by header, ``.h5ad`` ``obs`` columns, and ``label`` for the labels of any
source). :class:`CovariateCoding` turns them into one float tensor c of shape (n, K), one
column per covariate, in the order ``data.covariates`` names them:

* **categorical** (strings, integers, booleans): the code of the value among the training
  split's categories in sorted order (integers sorted as numbers), 0..C-1;
* **continuous** (floats): (v - mean) / sd, mean and sd of the training split (sd 1 for a
  constant covariate).

The kind is inferred from the values (floats continuous, anything else categorical) unless
``data.covariate_kinds`` forces it. The coding is fitted on the training split only and kept
in the run's checkpoint (:meth:`CovariateCoding.state`, plain containers), so new data are
coded as the training data were; a category training never saw, a missing covariate or a
NaN is refused in one line (:class:`~pyro_vae.errors.DataError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

KINDS = ("categorical", "continuous")
LABEL = "label"  # the covariate name of a source's own labels (IDX label file, npz <split>_labels, digits)
KEPT_ROWS = 100_000  # training rows of c kept in the checkpoint, for sampling over their distribution


def _strings(values: np.ndarray, name: str, where: str) -> np.ndarray:
    """Categorical values as the strings their categories are named by: integers (and
    integral floats) as integers, other numbers as they print, text stripped. Missing
    values (None, NaN) are refused."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise DataError(f"{where}: covariate {name!r} has missing (NaN) or infinite values; fill or drop those rows")
        if np.array_equal(values, np.round(values)):
            return np.array([str(int(v)) for v in values])
        return np.array([repr(float(v)) for v in values])
    if values.dtype.kind in "iub":
        return values.astype(np.int64).astype(str)
    if values.dtype.kind in "USO":
        out = []
        for v in values.tolist():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                raise DataError(f"{where}: covariate {name!r} has missing values; fill or drop those rows")
            out.append(str(v).strip())
        return np.array(out, dtype=object).astype(str) if out else np.array([], dtype=str)
    raise DataError(f"{where}: covariate {name!r} of dtype {values.dtype} is neither numbers nor names")


def _numbers(values: np.ndarray, name: str, where: str) -> np.ndarray:
    """Continuous values as float64; text that does not parse, NaN and infinities refused."""
    values = np.asarray(values)
    try:
        numbers = values.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: covariate {name!r} is continuous but holds non-numbers; set "
                        f"data.covariate_kinds.{name} = \"categorical\" or fix the values") from None
    if not np.isfinite(numbers).all():
        raise DataError(f"{where}: covariate {name!r} has missing (NaN) or infinite values; fill or drop those rows")
    return numbers


def infer_kind(values: np.ndarray) -> str:
    """Floats are continuous; integers, booleans and names categorical."""
    return "continuous" if np.asarray(values).dtype.kind == "f" else "categorical"


def _sort_key(category: str):
    try:
        return (0, int(category), "")
    except ValueError:
        return (1, 0, category)


@dataclass
class Covariate:
    """One covariate's coding: its ``categories`` (categorical) or ``mean`` and ``sd`` (continuous)."""

    name: str
    kind: str
    categories: Optional[list[str]] = None
    mean: float = 0.0
    sd: float = 1.0

    @property
    def size(self) -> int:
        """Categories of a categorical covariate; 0 for a continuous one (the model's layout)."""
        return len(self.categories) if self.kind == "categorical" else 0

    def code(self, values: np.ndarray, where: str) -> np.ndarray:
        if self.kind == "continuous":
            return (_numbers(values, self.name, where) - self.mean) / self.sd
        index = {c: i for i, c in enumerate(self.categories)}
        text = _strings(values, self.name, where)
        codes = np.empty(len(text), dtype=np.float64)
        for i, value in enumerate(text):
            if value not in index:
                shown = ", ".join(self.categories[:8]) + (", ..." if len(self.categories) > 8 else "")
                raise DataError(f"{where}: covariate {self.name!r} has the value '{value}', which training never saw "
                                f"(its categories: {shown}); drop those rows or retrain with them")
            codes[i] = index[value]
        return codes


@dataclass
class CovariateCoding:
    """The covariates' codings, in the order the spec names them (see the module docstring)."""

    covariates: list[Covariate] = field(default_factory=list)
    kept: Optional[Tensor] = None  # coded training rows (at most KEPT_ROWS), for sampling c

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.covariates]

    @property
    def layout(self) -> list[int]:
        """Per covariate, its number of categories (0: continuous): what the model is sized from."""
        return [c.size for c in self.covariates]

    def __bool__(self) -> bool:
        return bool(self.covariates)

    def __getitem__(self, name: str) -> Covariate:
        for c in self.covariates:
            if c.name == name:
                return c
        raise DataError(f"no covariate {name!r}; this run's covariates: {', '.join(self.names) or 'none'}")

    @classmethod
    def fit(cls, values: Mapping[str, np.ndarray], names: Sequence[str], kinds: Mapping[str, str], where: str,
            seed: int = 0) -> "CovariateCoding":
        """The coding of the training split's ``values`` ({name: array}) for ``names``;
        ``kinds`` forces a covariate's kind."""
        covariates = []
        for name in names:
            if name not in values:
                raise DataError(f"{where}: no covariate {name!r} in the training split; name a column the data "
                                "have in data.covariates")
            raw = np.asarray(values[name])
            kind = kinds.get(name) or infer_kind(raw)
            if kind == "continuous":
                numbers = _numbers(raw, name, where)
                sd = float(numbers.std()) if len(numbers) else 1.0
                covariates.append(Covariate(name, kind, None, float(numbers.mean()) if len(numbers) else 0.0,
                                            sd if sd > 0 else 1.0))
            else:
                categories = sorted(set(_strings(raw, name, where).tolist()), key=_sort_key)
                covariates.append(Covariate(name, kind, categories))
        coding = cls(covariates)
        if coding:
            coded = coding.encode(values, where)
            if len(coded) > KEPT_ROWS:
                rows = np.sort(np.random.default_rng(seed).choice(len(coded), KEPT_ROWS, replace=False))
                coded = coded[torch.from_numpy(rows)]
            coding.kept = coded
        return coding

    def encode(self, values: Mapping[str, np.ndarray], where: str) -> Tensor:
        """c (n, K) float32 for one split's raw values."""
        columns = []
        for c in self.covariates:
            if c.name not in values:
                raise DataError(f"{where}: no covariate {c.name!r}, which the model conditions on; give the data "
                                f"a {c.name!r} column (or array)")
            columns.append(c.code(np.asarray(values[c.name]), where))
        if not columns:
            return torch.zeros(0, 0)
        return torch.from_numpy(np.stack(columns, -1)).float()

    def assignments(self, text: Sequence[str] | Mapping[str, object], where: str) -> dict[int, float]:
        """``name=value`` settings (``--condition``, ``--transform``) as {column: code}."""
        pairs = text.items() if isinstance(text, Mapping) else (_split_setting(item, where) for item in text)
        out = {}
        for name, value in pairs:
            column = self.names.index(self[name].name)
            out[column] = float(self.covariates[column].code(np.array([value]), where)[0])
        return out

    def draw(self, n: int, changes: Mapping[int, float] = {}, seed: int = 0) -> Tensor:
        """c for n new examples (samples): rows drawn at random (seeded) from the training
        split's coded covariates, then the columns in ``changes`` ({column: code}) set."""
        if self.kept is None or not len(self.kept):
            raise DataError("sample: the run kept no training covariates to draw from; train it again")
        rows = torch.randint(len(self.kept), (n,), generator=torch.Generator().manual_seed(seed))
        return with_values(self.kept[rows].float(), changes)

    def state(self) -> dict:
        """Plain containers and tensors only (checkpoints hold nothing else)."""
        return {"covariates": [{"name": c.name, "kind": c.kind, "categories": c.categories, "mean": c.mean, "sd": c.sd}
                               for c in self.covariates],
                "kept": self.kept if self.kept is not None else torch.zeros(0, len(self.covariates))}

    @classmethod
    def from_state(cls, state: Optional[dict]) -> "CovariateCoding":
        if not state:
            return cls()
        covariates = []
        for c in state["covariates"]:
            if c["kind"] not in KINDS or (c["kind"] == "categorical" and not c["categories"]):
                raise ValueError("a covariate's kind or categories")
            if not (math.isfinite(float(c["mean"])) and math.isfinite(float(c["sd"])) and float(c["sd"]) > 0):
                raise ValueError("a covariate's mean or sd")
            covariates.append(Covariate(str(c["name"]), c["kind"], [str(v) for v in c["categories"]] if c["categories"]
                                        else None, float(c["mean"]), float(c["sd"])))
        kept = state.get("kept")
        return cls(covariates, kept if isinstance(kept, Tensor) and len(kept) else None)


def _split_setting(item: str, where: str) -> tuple[str, str]:
    name, sep, value = str(item).partition("=")
    if not sep or not name.strip():
        raise DataError(f"{where}: {item!r} is not NAME=VALUE; give e.g. batch=b1 or label=7")
    return name.strip(), value.strip()


def with_values(c: Tensor, assignments: Mapping[int, float]) -> Tensor:
    """c with the given columns set to the given codes (a counterfactual covariate)."""
    c = c.clone()
    for column, code in assignments.items():
        c[..., column] = code
    return c
