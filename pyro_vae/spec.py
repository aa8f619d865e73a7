"""The declarative spec: TOML in, typed and validated objects out.

A spec has three tables. ``[model]`` says what is fit (latent size and the five
swappable slots), ``[inference]`` how it is fit (estimator, optimizer, schedule),
``[data]`` on what. Model files (``models/*.toml``) hold only ``[model]``, inference
files (``inference/*.toml``) only ``[inference]``, so any model runs with any
inference spec. Every slot table has a ``kind`` and that kind's parameters, checked
by the slot's :class:`~pyro_vae.registry.Registry`; unknown keys are errors. The
resolved spec, with every default filled in, is what a run directory stores.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

import pydantic
import torch
import tomli_w
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .errors import SpecError
from .registry import Registry, SlotError, as_spec_error, check_code_trusted, kinds_in, trusting_code
from .data import DATASETS
from .infer.estimators import ESTIMATORS
from .infer.optim import OPTIMIZERS
from .infer.schedules import LR_SCHEDULES
from .model.likelihoods import LIKELIHOODS
from .model.networks import NETWORKS
from .model.posteriors import POSTERIORS
from .model.priors import PRIORS
from .params import NonNegativeInt, count, toml_value
from .tracking import TRACKERS

MAX_LATENT = 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# every swappable slot's registry, by slot name (an encoder and a decoder are networks)
SLOTS = {"prior": PRIORS, "likelihood": LIKELIHOODS, "posterior": POSTERIORS, "network": NETWORKS,
         "estimator": ESTIMATORS, "optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES, "data": DATASETS,
         "tracker": TRACKERS}


class DiscreteSpec(_Strict):
    """A categorical latent y with ``classes`` values at the top of the latent structure (see ``model/categorical.py``).

    ``shape = "mixture"``: p(y) p(z|y) p(x|z), a learned Gaussian p(z|y) per class (the
    Gaussian-mixture VAE; Dilokthanakul et al., 2016; Jiang et al., 2017).
    ``shape = "m2"``: p(y) p(z) p(x|y, z), the decoder sees y (Kingma et al., 2014).
    q(y|x) is the ``classifier`` network; q(z|x, y) the model's encoder and posterior,
    the encoder reading x and one-hot y concatenated; with ``encoder_reads_y = false`` the
    guide is q(y|x) q(z|x), the encoder reading x alone (VaDE's factorization; any encoder
    kind, conv included). ``alpha`` weighs the classification term
    alpha * E_labelled[log q(y|x)] on labelled examples (``data.labelled``; None: 0.1 N,
    the paper's choice, with N training examples); ``labelled_batch`` labelled examples
    enter each step. ``init = "vade"`` starts the mixture from VaDE's initialization
    (Jiang et al., 2017; ``infer/pretrain.py``): an autoencoder pretrained for
    ``pretrain_epochs``, a Gaussian mixture fitted to its codes sets p(z|y) (the best of
    ``mixture_fits`` EM runs by their likelihood), and q(y|x) is fitted to the mixture's
    responsibilities. ``covariance``: p(z|y)'s, ``diagonal`` or ``full`` (mixture only)."""

    classes: Annotated[int, Field(ge=2, le=1000)]
    shape: Literal["mixture", "m2"] = "mixture"
    classifier: dict[str, Any] = {"kind": "mlp", "hidden": [500]}
    alpha: Optional[Annotated[float, Field(ge=0, le=1e9)]] = None
    labelled_batch: count(1_000_000) = 100
    encoder_reads_y: bool = True
    init: Literal["random", "vade"] = "random"
    pretrain_epochs: count(10_000) = 10
    mixture_fits: count(1000) = 1
    covariance: Literal["diagonal", "full"] = "diagonal"

    @model_validator(mode="after")
    def _resolve_slots(self):
        self.classifier = _in_slot("classifier", NETWORKS, self.classifier, "mlp")
        if self.init == "vade" and (self.shape != "mixture" or self.encoder_reads_y):
            raise ValueError("init = \"vade\" fits a Gaussian mixture p(z|y) to the codes of q(z|x): it needs "
                             "shape = \"mixture\" and encoder_reads_y = false")
        if self.covariance == "full" and self.shape != "mixture":
            raise ValueError("covariance = \"full\" is p(z|y)'s, and shape = \"m2\" has no p(z|y); use "
                             "shape = \"mixture\" or covariance = \"diagonal\"")
        if self.mixture_fits > 1 and self.init != "vade":
            raise ValueError("mixture_fits counts the mixture fits of init = \"vade\"; set init = \"vade\" "
                             "or remove mixture_fits")
        return self


MAX_LAYERS = 8


class UpperLayerSpec(_Strict):
    """A stochastic layer above the bottom one (``[[model.upper_layers]]``, top first):
    its size, its posterior family, the ``encoder`` network of its guide (reading the layer
    below's z in the bottom_up guide, x and the layer above's z in top_down, the layer
    below's deterministic output in the ladder) and the ``prior_network`` that gives the
    mean and scale of p(z_below | z_this), a diagonal Gaussian (``model/layers.py``)."""

    latent_dim: Annotated[int, Field(gt=0, le=MAX_LATENT)]
    posterior: dict[str, Any] = {"kind": "diagonal_normal"}
    encoder: dict[str, Any] = {"kind": "mlp", "hidden": [256]}
    prior_network: dict[str, Any] = {"kind": "mlp", "hidden": [256]}

    @model_validator(mode="after")
    def _resolve_slots(self):
        self.posterior = _in_slot("posterior", POSTERIORS, self.posterior, "diagonal_normal")
        for name in ("encoder", "prior_network"):
            setattr(self, name, _in_slot(name, NETWORKS, getattr(self, name), "mlp"))
        return self


class ConditionSpec(_Strict):
    """How the covariates c (``data.covariates``) enter the model (``model/condition.py``):
    the decoder p(x | z, c) always; the encoder q(z | x, c) when ``encoder``; the prior
    p(z | c) = N(mu(c), diag sigma(c)^2) from ``prior_network`` when ``prior``. A categorical
    covariate enters as one-hot (``embedding_dim = 0``) or a learned embedding; ``inject``
    adds c to the decoder's first linear map (``input``) or to every hidden layer's
    (``every_layer``, scvi-tools' deeply_inject_covariates). ``prior_per_category`` names a
    categorical covariate k: p(z | c) = p_k(z), one prior of ``model.prior``'s kind (and
    options) per category of k, each with parameters of its own."""

    encoder: bool = True
    prior: bool = False
    prior_per_category: Optional[Annotated[str, Field(min_length=1, max_length=200)]] = None
    embedding_dim: Annotated[int, Field(ge=0, le=1024)] = 0
    inject: Literal["input", "every_layer"] = "input"
    prior_network: dict[str, Any] = {"kind": "mlp", "hidden": [64]}

    _prior_column: Optional[int] = pydantic.PrivateAttr(None)  # prior_per_category's place in data.covariates

    @model_validator(mode="after")
    def _resolve_slots(self):
        self.prior_network = _in_slot("prior_network", NETWORKS, self.prior_network, "mlp")
        if self.prior and self.prior_per_category is not None:
            raise ValueError("model.condition: prior = true (a network's p(z | c)) and prior_per_category (a prior per "
                             "category) are two priors; set one")
        return self


class ModelSpec(_Strict):
    """What is fit: p(z), p(x|z), q(z|x) and the two networks (and, optionally, a discrete
    latent y, or stochastic layers above z: ``upper_layers``, with the guide's
    ``inference_network`` and what the decoder reads)."""

    latent_dim: Annotated[int, Field(gt=0, le=MAX_LATENT)] = 16
    prior: dict[str, Any] = {"kind": "standard_normal"}
    likelihood: dict[str, Any] = {"kind": "bernoulli"}
    posterior: dict[str, Any] = {"kind": "diagonal_normal"}
    encoder: dict[str, Any] = {"kind": "mlp"}
    decoder: dict[str, Any] = {"kind": "mlp"}
    encoder_input: Literal["auto", "identity", "log1p"] = "auto"  # what the encoder sees of x
    discrete: Optional[DiscreteSpec] = None
    # stochastic layers above z (the bottom layer, latent_dim and posterior above), top first
    upper_layers: Annotated[list[UpperLayerSpec], Field(max_length=MAX_LAYERS - 1)] = []
    inference_network: Literal["bottom_up", "top_down", "ladder"] = "bottom_up"
    decoder_reads: Literal["bottom", "all"] = "bottom"
    condition: Optional[ConditionSpec] = None  # how data.covariates enter (defaults when covariates are named)
    # steps q(z|x) is refined by, per example, as evaluate's and analyze's importance proposal (their --refine)
    refine_steps: Annotated[int, Field(ge=0, le=100_000)] = 0

    @model_validator(mode="after")
    def _resolve_slots(self):
        for name in ("prior", "likelihood", "posterior", "encoder", "decoder"):
            registry = SLOTS["network" if name in ("encoder", "decoder") else name]
            setattr(self, name, _in_slot(name, registry, getattr(self, name), _default_kind(type(self), name)))
        return self


def _device_string(value: str) -> str:
    """``auto`` or a torch device string (whether this machine has it is checked when training)."""
    if value != "auto":
        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(f"{value!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps") from None
    return value


class Schedule(_Strict):
    """How long and in what order: epochs, batches, KL weighting, stopping, seed, device."""

    epochs: count(1_000_000) = 200
    batch_size: count(1_000_000) = 128
    kl_warmup_epochs: Annotated[float, Field(ge=0)] = 0.0
    beta: Annotated[float, Field(ge=0, le=1e6)] = 1.0
    patience: NonNegativeInt = 0
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    device: Annotated[str, AfterValidator(_device_string)] = "auto"  # auto, cpu, cuda, cuda:1, mps, ...
    clip_norm: Annotated[float, Field(ge=0)] = 0.0
    checkpoint_every: NonNegativeInt = 0
    collective_timeout: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    # a traced training step (infer/compiled.py): auto (where it measured faster), true, false, or a backend
    compile: Literal["auto", "graph", "inductor", "cuda_graph"] | bool = "auto"


class InferenceSpec(_Strict):
    """How it is fit: the ELBO estimator, the optimizer, its learning rate's schedule and the
    schedule of the epochs."""

    estimator: dict[str, Any] = {"kind": "trace_elbo"}
    optimizer: dict[str, Any] = {"kind": "adam"}
    lr_schedule: dict[str, Any] = {"kind": "constant"}
    schedule: Schedule = Field(default_factory=Schedule)

    @model_validator(mode="after")
    def _resolve_slots(self):
        self.estimator = _in_slot("estimator", ESTIMATORS, self.estimator, _default_kind(InferenceSpec, "estimator"))
        self.optimizer = _in_slot("optimizer", OPTIMIZERS, self.optimizer, _default_kind(InferenceSpec, "optimizer"))
        self.lr_schedule = _in_slot("lr_schedule", LR_SCHEDULES, self.lr_schedule,
                                    _default_kind(InferenceSpec, "lr_schedule"))
        return self

    @model_validator(mode="after")
    def _jit_without_warmup(self):
        """A JIT-traced loss holds beta as a constant, so it cannot follow a KL warm-up."""
        if self.estimator.get("jit") and self.schedule.kl_warmup_epochs > 0:
            raise SlotError(("estimator", "jit"),
                            "true compiles beta into the traced loss and cannot follow a KL warm-up; "
                            "set inference.schedule.kl_warmup_epochs = 0 or inference.estimator.jit = false")
        return self


class DataSpec(_Strict):
    """On what: a named data set or a file, and how its values are prepared."""

    name: Optional[str] = None
    path: Optional[str] = None
    binarize: Literal["none", "static", "dynamic"] = "none"
    normalize: Literal["auto"] | bool = "auto"
    standardize: Literal["auto", "per_feature"] | bool = "auto"
    valid_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    in_memory: Literal["auto"] | bool = "auto"
    labels: Optional[str] = None  # CSV: a header column; .h5ad: an obs column
    layer: Optional[str] = None  # .h5ad: a layer instead of X
    split_column: Optional[str] = None  # .h5ad: an obs column of train/valid/test
    labelled: Optional[Annotated[int, Field(gt=0)]] = None  # keep the labels of N training examples (semi-supervised)
    # observed inputs the model conditions on (data/covariates.py, model/condition.py), and kinds forced
    covariates: Optional[Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=64)]] = None
    covariate_kinds: Optional[dict[str, Literal["categorical", "continuous"]]] = None

    @model_validator(mode="after")
    def _covariates(self):
        names = self.covariates or []
        if len(set(names)) != len(names):
            raise ValueError(f"data.covariates names a covariate twice ({', '.join(names)}); name each once")
        unknown = sorted(set(self.covariate_kinds or {}) - set(names))
        if unknown:
            raise ValueError(f"data.covariate_kinds names {unknown[0]!r}, which data.covariates does not; "
                             "add it to data.covariates or remove it")
        return self

    @model_validator(mode="after")
    def _name_or_path(self):
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of data.name (a named data set) or data.path (a file)")
        if self.name is not None:
            if self.name not in DATASETS.names():
                raise ValueError(
                    f"unknown data set {self.name!r}; named data sets: {', '.join(DATASETS.names())} "
                    "(or give data.path)"
                )
        return self


class Spec(_Strict):
    """The whole, resolved spec: what is fit, how, and on what."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    data: DataSpec = Field(default_factory=lambda: DataSpec(name="digits"))
    tracking: Optional[dict[str, Any]] = None  # where progress is sent: {kind = "tensorboard" | "mlflow", ...}

    @model_validator(mode="after")
    def _condition_on_covariates(self):
        """Named covariates enter the model as model.condition says (its defaults where the
        model spec has no such table). A condition table without covariates is refused when
        the model is built (``build_vae``), so that a shipped conditional model spec loads
        with any data table."""
        if self.data.covariates and self.model.condition is None:
            self.model.condition = ConditionSpec()
        condition = self.model.condition
        if condition is not None and condition.prior_per_category is not None and self.data.covariates:
            names = self.data.covariates  # (none named: build_vae refuses the condition table)
            if condition.prior_per_category not in names:
                raise ValueError(f"model.condition.prior_per_category names {condition.prior_per_category!r}, which "
                                 f"data.covariates does not ({', '.join(names)}); name one of them")
            condition._prior_column = names.index(condition.prior_per_category)
        return self

    @model_validator(mode="after")
    def _resolve_tracking(self):
        if self.tracking is not None:
            try:
                self.tracking = TRACKERS.validate(self.tracking)
            except SlotError as exc:
                raise SlotError(("tracking",) + exc.loc, exc.message) from None
        return self

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Spec":
        try:
            return cls.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise as_spec_error(exc) from None

    @classmethod
    def from_toml(cls, text: str) -> "Spec":
        """A spec from the text of a resolved spec (``to_toml``)."""
        return cls.from_dict(tomllib.loads(text))

    def to_dict(self) -> dict[str, Any]:
        """Plain tables, without unset (None) values: TOML has no null, and a slot parameter
        left at None (e.g. a likelihood's initial_scale, taken from the data) is its default."""
        def drop_none(value):
            if isinstance(value, dict):
                return {k: drop_none(v) for k, v in value.items() if v is not None}
            return value

        return drop_none(self.model_dump(mode="python", exclude_none=True))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _default_kind(spec: type[BaseModel], slot: str) -> str:
    """The kind a slot takes when its table names none (the field's default table)."""
    return spec.model_fields[slot].get_default(call_default_factory=True)["kind"]


def _in_slot(name: str, registry: Registry, table: Mapping[str, Any], default_kind: str) -> dict[str, Any]:
    """A slot's table validated by its registry. A table without ``kind`` (a file that leaves
    the slot out, then ``--set slot.key=...``) takes the slot's default kind."""
    if isinstance(table, Mapping) and "kind" not in table:
        table = {"kind": default_kind, **table}
    try:
        return registry.validate(table)
    except SlotError as exc:
        raise SlotError((name,) + exc.loc, exc.message) from None


# --- files, names and overrides ------------------------------------------------------


def catalog_dir(which: str) -> Path:
    """The folder of shipped ``models`` or ``inference`` specs (wheel, else checkout)."""
    packaged = Path(__file__).parent / "catalog" / which
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / which


def shipped(which: str) -> dict[str, Path]:
    """Shipped spec names -> files, for ``which`` in ('models', 'inference')."""
    return {p.stem: p for p in sorted(catalog_dir(which).glob("*.toml"))}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: malformed TOML ({exc}); fix the file's syntax") from None
    except RecursionError:
        raise SpecError(f"{path}: arrays or tables nested too deeply to read; a spec nests a few levels") from None


def _table_from(ref: str, which: str, table: str) -> dict[str, Any]:
    """The ``[table]`` of a shipped spec name or a spec file path."""
    names = shipped(which)
    if ref in names:
        path = names[ref]
    elif ref.endswith(".toml") or "/" in ref or Path(ref).exists():
        path = Path(ref)
    else:
        raise SpecError(
            f"unknown {which} spec {ref!r}; shipped: {', '.join(names)} (or give a .toml path)"
        )
    raw = read_toml(path)
    extra = sorted(set(raw) - {table})
    if extra:
        raise SpecError(f"{path}: unexpected top-level key {extra[0]!r} (a {which} spec holds only [{table}])")
    if table not in raw or not isinstance(raw[table], dict):
        raise SpecError(f"{path}: no [{table}] table")
    return raw[table]


def data_table(ref: str) -> dict[str, Any]:
    """``--data``: a named data set or a file path."""
    return {"name": ref} if ref in DATASETS.names() else {"path": str(Path(ref).resolve())}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``KEY=VALUE`` -> (key path, value): VALUE as a TOML value, else as a plain string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. --set model.latent_dim=32")
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise SpecError(f"--set {text!r}: empty part in key {key!r}")
    return [p.strip() for p in parts], toml_value(value)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each ``KEY=VALUE`` in the raw tables.

    ``SLOT.kind=NEW`` with a kind other than the file's replaces the slot's table: the
    file's parameters belong to the old kind. Parameters given with ``--set`` are kept,
    whatever their order on the command line.
    """
    parsed = [(text, *parse_override(text)) for text in overrides]
    for text, parts, value in sorted(parsed, key=lambda item: item[1][-1] != "kind"):  # kinds first, else in order
        if parts[-1] == "kind" and len(parts) > 1:
            table = lookup(raw, parts[:-1])
            if isinstance(table, dict) and table.get("kind") != value:
                table.clear()
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # an array of tables (model.upper_layers.0.latent_dim): by its index
                child = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            else:
                child = node.setdefault(part, {})
            if isinstance(child, list) and parts[depth + 1].isdigit():
                node = child
                continue
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                if isinstance(node, list):
                    held = f"holds {len(node)} tables; index them 0 to {len(node) - 1}" if node else "holds no tables"
                    raise SpecError(f"--set {text!r}: {'.'.join(parts[:depth])} {held}")
                raise SpecError(f"--set {text!r}: {where} is a value, not a table")
            node = child
        node[parts[-1]] = value
        if parts[:-1] == ["data"] and parts[-1] in ("name", "path"):  # one source: setting one clears the other
            node.pop("path" if parts[-1] == "name" else "name", None)
    return raw


def lookup(raw: dict[str, Any], parts: Sequence[str]) -> Any:
    """The value at key path ``parts`` in the raw tables, or None."""
    node: Any = raw
    for part in parts:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):  # an array of tables, by index
            node = node[int(part)]
        elif not isinstance(node, dict) or part not in node:
            return None
        else:
            node = node[part]
    return node


DEFAULT_MODEL, DEFAULT_INFERENCE, DEFAULT_DATA = "beta_binomial_mixture", "trace_elbo", "digits"
DEFAULT_DISCRETE_INFERENCE = "trace_enum"  # the default inference for a model with a [model.discrete] table


def load_spec(
    model: str | None = None,
    inference: str | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
    spec_file: str | None = None,
    trust_code: bool = False,
) -> Spec:
    """Resolve shipped names or paths, apply ``--set`` overrides, validate.

    Without ``spec_file`` the three tables come from ``model``, ``inference`` and ``data``
    (the defaults where None). With ``spec_file`` (e.g. a run's resolved ``spec.toml``) its
    tables are the start, and each of ``model``, ``inference``, ``data`` that is given
    replaces that table of the file; ``overrides`` apply last, in both cases.
    """
    if spec_file is not None:
        raw = read_toml(Path(spec_file))  # other top-level keys are refused by Spec's validation
    else:
        model, data = model or DEFAULT_MODEL, data or DEFAULT_DATA
        raw = {}
    if model is not None:
        raw["model"] = _table_from(model, "models", "model")
    if inference is None and spec_file is None:
        # a discrete latent's default is the exact sum over y: the score function of trace_elbo is far noisier
        inference = DEFAULT_DISCRETE_INFERENCE if "discrete" in raw["model"] else DEFAULT_INFERENCE
    if inference is not None:
        raw["inference"] = _table_from(inference, "inference", "inference")
    if data is not None:
        raw["data"] = data_table(data)
    raw = apply_overrides(raw, overrides)
    files = [ref for ref in (spec_file, model, inference) if ref is not None and ref not in shipped_names()]
    # a run's spec.toml (its folder holds the manifest.json runs.py writes): never code from inside that run
    run_dir = Path(spec_file).parent if spec_file is not None and (Path(spec_file).parent / "manifest.json").is_file() \
        else None
    with trusting_code(trust_code):
        check_code_trusted(raw, " and ".join(files) or "the spec", given_kinds(overrides), run_dir=run_dir)
    return Spec.from_dict(raw)


def shipped_names() -> set[str]:
    return {*shipped("models"), *shipped("inference")}


def given_kinds(overrides: Sequence[str]) -> frozenset:
    """The kinds that ``KEY=VALUE`` overrides name (``--set``: written by the user)."""
    kinds = set()
    for text in overrides:
        parts, value = parse_override(text)
        if parts[-1] == "kind" and isinstance(value, str):
            kinds.add(value)
        kinds.update(kind for _, kind in kinds_in(value))
    return frozenset(kinds)


def spec_summary(path: Path) -> str:
    """The comment block that opens a shipped spec file (its description), on one line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#")), len(lines))
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line.lstrip("# ").strip())
    return " ".join(block)
