"""One registry pattern for every swappable slot.

A slot (prior, likelihood, posterior, network, estimator, optimizer, data set) is a
:class:`Registry` of classes chosen by ``kind``. A ``kind`` is either a registered
name or an import path ``package.module:Name``, so a user's own class plugs in
without touching the library.

A class declares its spec parameters as the keyword-only arguments of its
``__init__`` (annotation and default); its positional arguments are the sizes the
library passes in (latent dimension, data shape, ...). From that one signature the
registry derives the pydantic model that validates a spec table, the defaults
written into a resolved spec, and the listing printed by ``pyro-vae specs``::

    @PRIORS.register("mixture")
    class MixturePrior(Prior):
        def __init__(self, latent_dim: int, *, components: count(10_000) = 10): ...
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import pydantic

from .errors import SpecError


class SlotError(ValueError):
    """A slot table failed validation; ``loc`` is the key path inside the table."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Any  # inspect.Parameter.empty when required


@dataclass(frozen=True)
class KindInfo:
    name: str
    summary: str
    parameters: tuple[Parameter, ...]


class Registry:
    """Names -> classes for one slot; validates and builds spec tables of that slot."""

    def __init__(self, slot: str):
        self.slot = slot
        self._classes: dict[str, type] = {}
        self.base: type | None = None  # what every kind of this slot is (a class) or builds (a factory)

    def protocol(self, base: type) -> type:
        """Class decorator: ``base`` is the slot's protocol, which every class plugged into the
        slot subclasses (and every factory function returns an instance of)."""
        self.base = base
        return base

    def register(self, name: str):
        def decorator(cls: type) -> type:
            if name in self._classes:
                raise ValueError(f"{self.slot} kind {name!r} is registered twice")
            self._classes[name] = cls
            cls.kind = name
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._classes)

    def resolve(self, kind: str) -> type:
        """The class for ``kind``: a registered name or ``package.module:Name``. An import
        path is checked to name a class of this slot (``inspect.isclass``, then the slot's
        base) before anything of it is called; importing the module is the only code run."""
        if kind in self._classes:
            return self._classes[kind]
        if ":" in kind:
            module_name, _, attr = kind.partition(":")
            if not MODULE_NAME.match(module_name) or not attr.isidentifier():
                raise SlotError(("kind",), f"{kind!r} is not an import path package.module:ClassName")
            try:
                cls = getattr(import_from_working_directory(module_name), attr)
            except (ImportError, AttributeError, ValueError) as exc:
                raise SlotError(
                    ("kind",), f"cannot import {self.slot} class {kind!r} ({exc}); the module is looked up on "
                    f"sys.path and in the working directory {os.getcwd()}"
                ) from None
            except Exception as exc:  # the module itself failed while being imported
                raise SlotError(("kind",), f"importing the module of {kind!r} failed ({type(exc).__name__}: "
                                f"{str(exc)[:120]})") from None
            if not inspect.isclass(cls):
                raise SlotError(("kind",), f"{kind!r} is a {type(cls).__name__}, not a class; {self._a} of your own "
                                f"is a class{self._subclassing}")
            if self.base is not None and not issubclass(cls, self.base):
                raise SlotError(("kind",), self._misplaced(kind, cls))
            return cls
        raise SlotError(
            ("kind",),
            f"unknown {self.slot} kind {kind!r}; registered: {', '.join(self.names())} "
            "(or an import path package.module:Name)",
        )

    def validate(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """``{"kind": ..., **params}`` with every parameter checked and defaults filled in."""
        if not isinstance(table, Mapping):
            raise SlotError((), f"must be a table with a 'kind' key, got {table!r}")
        kind = table.get("kind")
        if not isinstance(kind, str):
            raise SlotError(
                ("kind",), f"missing or not a string; registered: {', '.join(self.names())}"
            )
        params = {k: v for k, v in table.items() if k != "kind"}
        model = parameter_model(self.resolve(kind))
        try:
            validated = model.model_validate(params)
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            loc = tuple(error["loc"])
            message = describe_error(error)
            if error["type"] == "extra_forbidden":
                allowed = ", ".join(model.model_fields) or "none"
                message = f"is not a parameter of {self.slot} kind {kind!r} (its parameters: {allowed})"
            raise SlotError(loc, message) from None
        return {"kind": kind, **validated.model_dump()}

    def build(self, table: Mapping[str, Any], *sizes):
        """Instantiate ``table['kind']`` with the library's sizes and the table's parameters."""
        resolved = self.validate(table)
        kind = resolved.pop("kind")
        try:
            built = self.resolve(kind)(*sizes, **resolved)
        except TypeError as exc:  # e.g. another slot's factory function, which takes other arguments
            if self.base is None:
                raise
            raise SpecError(f"{self.slot} kind {kind!r} cannot be built as {self._a} ({exc}); "
                            f"{self._a} is a {self.base.__module__}.{self.base.__qualname__}") from None
        if self.base is not None and not isinstance(built, self.base):  # a factory function of another slot
            raise SpecError(f"{self.slot} kind {kind!r}: {self._misplaced(kind, type(built))}")
        return built

    @property
    def _subclassing(self) -> str:
        return "" if self.base is None else f" subclassing {self.base.__module__}.{self.base.__qualname__}"

    @property
    def _a(self) -> str:
        return f"{'an' if self.slot[0] in 'aeiou' else 'a'} {self.slot}"

    def _misplaced(self, kind: str, cls: type) -> str:
        return (f"{kind!r} is a {cls.__name__} ({', '.join(b.__name__ for b in cls.__mro__[1:3])}), not {self._a}; "
                f"{self._a} subclasses {self.base.__module__}.{self.base.__qualname__} (see "
                "docs/guides/components.md), or put the class in the slot it belongs to")

    def describe(self) -> list[KindInfo]:
        return [describe_class(name, cls) for name, cls in sorted(self._classes.items())]


MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")  # package.module, no relative imports
LIBRARY = __package__  # kinds from the library's own modules need no trust

# (every kind trusted, the kinds trusted): what the caller said may be imported
_TRUSTED = contextvars.ContextVar("pyro_vae_trusted_code", default=(False, frozenset()))


@contextmanager
def trusting_code(trusted: bool = True, kinds=()):
    """Within it, import-path kinds read from spec files are imported: all of them
    (``trusted``, the command line's ``--trust-code``), or those in ``kinds`` (the ones the
    caller itself gave, e.g. a comparison's ``--vary`` values, when it reads its runs back)."""
    everything, known = _TRUSTED.get()
    token = _TRUSTED.set((everything or trusted, known | frozenset(kinds)))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def kinds_in(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(key.path, kind)`` of nested tables (and lists of tables)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "kind" and isinstance(value, str):
                yield path, value
            else:
                yield from kinds_in(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from kinds_in(value, f"{where}[{i}]")


def foreign_module(kind: str) -> Optional[str]:
    """The module an import-path kind imports when it is not the library's own; else None."""
    if ":" not in kind:
        return None
    module = kind.partition(":")[0]
    return None if module == LIBRARY or module.startswith(f"{LIBRARY}.") else module


def check_code_trusted(raw: Any, source: str, given: frozenset = frozenset(), run_dir: Optional[Path] = None) -> None:
    """Refuse the tables ``raw`` read from ``source`` (a file the user did not write on the
    command line) when a kind would import a module from outside the library, unless the
    user trusts code (:func:`trusting_code`) or gave that kind on the command line
    (``given``). A module inside ``run_dir`` (a run directory being read) is refused even
    then: code shipped inside a run is never imported."""
    for where, kind in kinds_in(raw):
        module = foreign_module(kind)
        if module is None:
            continue
        if run_dir is not None and MODULE_NAME.match(module):
            origin = module_origin(module.partition(".")[0])
            if origin is not None and _inside(origin, run_dir):
                raise SpecError(f"{source}: {where} = {kind!r} names module {module!r}, which would be imported from "
                                f"the run directory {run_dir} itself ({origin}); pyro-vae never imports code shipped "
                                "inside a run: install the module, or run from another folder")
        everything, known = _TRUSTED.get()
        if everything or kind in given or kind in known:
            continue
        raise SpecError(f"{source}: {where} = {kind!r} would import and run module {module!r}, code from outside "
                        f"pyro-vae; pass $trust_code only if you trust whoever wrote {source} (read the module first)")


def module_origin(top: str) -> Optional[Path]:
    """Where the top-level module ``top`` would be imported from (as :func:`import_from_working_directory`
    looks it up), without importing it; None when it is not found or has no file."""
    module = sys.modules.get(top)
    if module is not None:
        location = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), None)
        return None if location is None else Path(location)
    try:
        spec = importlib.util.find_spec(top)
        if spec is None and os.getcwd() not in sys.path and "" not in sys.path:
            spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.has_location and spec.origin:
        return Path(spec.origin)
    return next((Path(p) for p in spec.submodule_search_locations or []), None)


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def import_from_working_directory(module_name: str):
    """``importlib.import_module``, with the working directory searched too (as ``python -m``
    does, where the console script would not): a user's ``mycomp/parts.py`` beside the
    spec is found by ``kind = "mycomp.parts:Name"``. The directory is appended, so it never
    shadows an installed package."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = module_name.partition(".")[0]
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _keyword_parameters(cls) -> list[tuple[inspect.Parameter, Any]]:
    init = cls.__init__ if isinstance(cls, type) else cls  # a class, or a factory function
    try:
        hints = typing.get_type_hints(init, include_extras=True)
    except Exception:  # unresolved forward references in a user's class
        hints = {}
    return [
        (p, hints.get(p.name, Any if p.annotation is p.empty else p.annotation))
        for p in inspect.signature(init).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


@cache
def parameter_model(cls: type) -> type[pydantic.BaseModel]:
    """The strict pydantic model of ``cls``'s keyword-only ``__init__`` arguments."""
    fields = {
        p.name: (annotation, ... if p.default is p.empty else p.default)
        for p, annotation in _keyword_parameters(cls)
    }
    config = pydantic.ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True, allow_inf_nan=False)
    return pydantic.create_model(f"{cls.__name__}Parameters", __config__=config, **fields)


def _type_name(annotation: Any) -> str:
    if getattr(annotation, "__metadata__", None) is not None:  # Annotated[T, ...]
        base = _type_name(typing.get_args(annotation)[0])
        constraints = [c for m in annotation.__metadata__ for c in getattr(m, "metadata", [m])]
        bounds = ", ".join(
            f"{op} {getattr(c, attr)}"
            for c in constraints
            for op, attr in ((">", "gt"), (">=", "ge"), ("<", "lt"), ("<=", "le"))
            if getattr(c, attr, None) is not None
        )
        return f"{base} {bounds}".strip()
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin is not None and typing.get_args(annotation):
        inner = ", ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None))
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{inner} or none" if name == "Union" and type(None) in typing.get_args(annotation) else f"{name}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_class(name: str, cls: type) -> KindInfo:
    doc = (inspect.getdoc(cls) or "").strip()
    summary = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, on one line
    params = tuple(
        Parameter(p.name, _type_name(annotation), p.default)
        for p, annotation in _keyword_parameters(cls)
    )
    return KindInfo(name, summary, params)


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as 'message (got value)'."""
    message = error["msg"]
    if error["type"] == "value_error":
        message = str(error.get("ctx", {}).get("error", message))
    value = error.get("input")
    if error["type"] in ("missing", "extra_forbidden") or isinstance(value, Mapping):
        return message
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{message} (got {shown})"


def format_validation_error(exc: pydantic.ValidationError, prefix: tuple = ()) -> str:
    """A pydantic error as one line: ``key.path: what is wrong (got value)``."""
    errors = exc.errors()
    error = errors[0]
    loc = prefix + tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, SlotError):
        loc += cause.loc
        message = cause.message
    elif error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against the spec reference, docs/reference/spec.md)"
    else:
        message = describe_error(error)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    path = ".".join(str(part) for part in loc)
    return f"{path}: {message}{more}" if path else f"{message}{more}"


def as_spec_error(exc: pydantic.ValidationError, prefix: tuple = ()) -> SpecError:
    return SpecError(format_validation_error(exc, prefix))
