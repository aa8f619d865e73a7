"""Specs: resolution, overrides, validation errors, and the registry pattern."""

import tomllib

import pytest

from pyro_vae.errors import SpecError
from pyro_vae.model.priors import PRIORS
from pyro_vae.spec import Spec, load_spec, parse_override, shipped


def test_default_spec_is_fully_resolved():
    spec = load_spec()
    raw = tomllib.loads(spec.to_toml())
    assert set(raw) == {"model", "inference", "data"}
    assert raw["model"]["encoder"] == {"kind": "mlp", "hidden": [400], "activation": "softplus", "dropout": 0.0}
    assert raw["inference"]["estimator"]["kind"] == "trace_elbo"
    assert raw["inference"]["optimizer"]["lr"] == 1e-3
    assert raw["data"] == {"name": "digits", "binarize": "none", "normalize": "auto", "valid_fraction": 0.1,
                           "test_fraction": 0.1, "standardize": "auto", "in_memory": "auto"}
    # the resolved form reads back to the same spec
    assert Spec.from_dict(raw) == spec


def test_shipped_specs_validate():
    for name in shipped("models"):
        load_spec(model=name)
    for name in shipped("inference"):
        load_spec(inference=name)
    assert {"bernoulli_mlp", "gaussian_mlp"} <= set(shipped("models"))
    assert "trace_elbo" in shipped("inference")


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("model.latent_dim=50", ["model", "latent_dim"], 50),
        ("model.encoder.hidden=[400,400]", ["model", "encoder", "hidden"], [400, 400]),
        ("model.prior.kind=vamp", ["model", "prior", "kind"], "vamp"),  # not TOML: a plain string
        ('model.prior.kind="vamp"', ["model", "prior", "kind"], "vamp"),
        ("inference.optimizer.lr=3e-4", ["inference", "optimizer", "lr"], 3e-4),
        ("data.normalize=false", ["data", "normalize"], False),
        ("data.path=some file.npz", ["data", "path"], "some file.npz"),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_reach_the_resolved_spec():
    spec = load_spec(overrides=["model.latent_dim=50", "model.encoder.hidden=[400,400]", "model.prior.kind=vamp",
                                "inference.schedule.epochs=5"])
    assert spec.model.latent_dim == 50
    assert spec.model.encoder["hidden"] == [400, 400]
    assert spec.model.prior == {"kind": "vamp", "components": 500, "pseudo_inputs": "constrained"}  # defaults filled in
    assert spec.inference.schedule.epochs == 5


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("model.latent_dims=3", ["model.latent_dims", "unknown key"]),
        ("model.latent_dim=-1", ["model.latent_dim", "greater than 0", "-1"]),
        ("model.latent_dim=abc", ["model.latent_dim", "integer", "'abc'"]),
        ("model.latent_dim=3.5", ["model.latent_dim", "integer"]),
        ("model.prior.kind=nope", ["model.prior.kind", "unknown prior kind 'nope'", "standard_normal", "vamp"]),
        ("model.prior.df=3", ["model.prior.df", "not a parameter of prior kind 'mixture'"]),  # the default prior's
        ("model.encoder.hidden=[]", None),  # valid: a linear encoder
        ("model.encoder.hidden=[0]", ["model.encoder.hidden.0", "greater than 0"]),
        ("model.encoder.activation=swish", ["model.encoder.activation", "softplus"]),
        ("inference.estimator.kind=bogus", ["inference.estimator.kind", "trace_elbo"]),
        ("inference.schedule.device=tpu", ["inference.schedule.device", "auto"]),
        ("inference.schedule.batch_size=0", ["inference.schedule.batch_size"]),
        ("data.binarize=always", ["data.binarize", "static"]),
        ("data.valid_fraction=1.5", ["data.valid_fraction"]),
        ("data.name=cifar", ["unknown data set 'cifar'", "digits"]),
        ("model.latent_dim.x=3", ["model.latent_dim", "is a value, not a table"]),
        ("novalue", ["expected KEY=VALUE"]),
        ("model..x=1", ["empty part"]),
    ],
)
def test_bad_overrides_name_the_key(override, fragments):
    if fragments is None:
        load_spec(overrides=[override])
        return
    with pytest.raises(SpecError) as info:
        load_spec(overrides=[override])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_switching_a_kind_replaces_the_old_kinds_parameters():
    # iaf_posterior.toml sets steps/context/hidden for kind "iaf"; they do not apply to a diagonal normal
    spec = load_spec(model="iaf_posterior", overrides=["model.posterior.kind=diagonal_normal"])
    assert spec.model.posterior == {"kind": "diagonal_normal"}
    # parameters given with --set survive, in either order
    for order in (["model.prior.components=7", "model.prior.kind=mixture"], ["model.prior.kind=mixture", "model.prior.components=7"]):
        assert load_spec(overrides=order).model.prior == {"kind": "mixture", "components": 7}
    # the same kind keeps the file's parameters
    assert load_spec(model="iaf_posterior", overrides=["model.posterior.kind=iaf"]).model.posterior["steps"] == 2
    assert load_spec(overrides=["inference.estimator.kind=tail_adaptive"]).inference.estimator["num_particles"] == 5


def test_a_jit_estimator_with_a_kl_warmup_is_refused_by_the_spec():
    """The traced loss holds beta constant: the cross-field check is the spec's own, so a
    spec loaded from Python is refused as on the command line, before any training."""
    with pytest.raises(SpecError, match=r"^inference\.estimator\.jit: true compiles beta .* cannot follow a KL warm-up; "
                                        r"set inference\.schedule\.kl_warmup_epochs = 0"):
        load_spec(inference="jit_trace_elbo", overrides=["inference.schedule.kl_warmup_epochs=0.5"])
    assert load_spec(inference="jit_trace_elbo").inference.estimator["jit"] is True  # no warm-up: fine
    assert load_spec(overrides=["inference.schedule.kl_warmup_epochs=5"]).inference.schedule.kl_warmup_epochs == 5


def test_model_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nlatent_dim = 3\n")
    with pytest.raises(SpecError, match="malformed TOML"):
        load_spec(model=str(bad))
    both = tmp_path / "both.toml"
    both.write_text("[model]\nlatent_dim = 3\n[inference]\n")
    with pytest.raises(SpecError, match="unexpected top-level key 'inference'"):
        load_spec(model=str(both))
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(model=str(tmp_path / "missing.toml"))
    with pytest.raises(SpecError, match="unknown models spec 'nonesuch'; shipped: .*bernoulli_mlp"):
        load_spec(model="nonesuch")


def test_name_xor_path():
    with pytest.raises(SpecError, match="exactly one of data.name"):
        Spec.from_dict({"data": {"name": "digits", "path": "x.npz"}})
    with pytest.raises(SpecError, match="exactly one of data.name"):
        Spec.from_dict({"data": {}})


class MyPrior(PRIORS.resolve("learned_normal")):
    """A user's own prior, plugged in by import path."""

    def __init__(self, latent_dim, *, shift: float = 0.0):
        super().__init__(latent_dim)
        self.shift = shift


def test_import_path_kind_and_its_parameters():
    spec = load_spec(overrides=["model.prior.kind=test_spec:MyPrior", "model.prior.shift=2.5"])
    assert spec.model.prior == {"kind": "test_spec:MyPrior", "shift": 2.5}
    with pytest.raises(SpecError, match="model.prior.shift"):
        load_spec(overrides=["model.prior.kind=test_spec:MyPrior", "model.prior.shift=high"])
    with pytest.raises(SpecError, match="cannot import prior class 'no_such_module:X'"):
        load_spec(overrides=["model.prior.kind=no_such_module:X"])


def test_registry_describes_parameters_from_signatures():
    info = {k.name: k for k in PRIORS.describe()}
    assert info["mixture"].parameters[0].name == "components"
    assert info["mixture"].parameters[0].default == 10
    assert info["mixture"].parameters[0].type == "int > 0, <= 10000"
    assert info["standard_normal"].parameters == ()
    assert info["vamp"].summary.startswith("The VampPrior (Tomczak & Welling, 2018)")
