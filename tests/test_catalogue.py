"""The catalogue: every likelihood, prior and posterior against an independent computation;
the VampPrior's pseudo-inputs stay in the encoder inputs' domain and score deterministically
under encoder dropout."""

import math

import mpmath
import numpy as np
import pyro
import pytest
import torch
from pyro.distributions import transforms as T
from scipy import special, stats

from helpers import small_gaussian_vae as small
from pyro_vae.model import build_vae
from pyro_vae.model.likelihoods import LIKELIHOODS
from pyro_vae.model.posteriors import POSTERIORS
from pyro_vae.errors import SpecError
from pyro_vae.spec import Spec, load_spec

F_ = 6  # features


def softplus(v):
    return np.logaddexp(0, v)


def likelihood(kind, **params):
    lik = LIKELIHOODS.build({"kind": kind, **params}, (F_,))
    out = torch.randn(4, lik.outputs, F_, dtype=torch.float64)
    return lik.double(), out


# --- likelihoods ------------------------------------------------------------------------


def test_bernoulli_binary_and_soft_targets():
    lik, out = likelihood("bernoulli")
    p = special.expit(out[:, 0].numpy())
    x = torch.bernoulli(torch.full((4, F_), 0.5, dtype=torch.float64))
    expected = stats.bernoulli.logpmf(x.numpy(), p).sum(-1)
    assert np.allclose(lik(out).log_prob(x).numpy(), expected)
    soft = torch.rand(4, F_, dtype=torch.float64)
    cross_entropy = (soft.numpy() * np.log(p) + (1 - soft.numpy()) * np.log1p(-p)).sum(-1)
    assert np.allclose(lik(out).log_prob(soft).numpy(), cross_entropy)



@pytest.mark.parametrize("floor", [1e-5, 0.1])
def test_bernoulli_probability_floor_is_a_clamped_bernoulli(floor):
    """p = clip(sigmoid(l), eps, 1 - eps) against scipy, at logits inside and far outside the
    clamp; the mean is that p; no gradient passes a clamped logit, the others' are sigmoid's."""
    lik = LIKELIHOODS.build({"kind": "bernoulli", "probability_floor": floor}, (F_,)).double()
    out = torch.tensor([[[-40.0, -3.0, -0.2, 0.0, 2.5, 40.0]]], dtype=torch.float64, requires_grad=True)
    p = np.clip(special.expit(out[0, 0].detach().numpy()), floor, 1 - floor)
    for x in (torch.ones(1, F_, dtype=torch.float64), torch.zeros(1, F_, dtype=torch.float64)):
        assert np.allclose(lik(out).log_prob(x).detach().numpy(), stats.bernoulli.logpmf(x.numpy(), p).sum(-1))
    assert np.allclose(lik.mean(out).detach().numpy(), p)
    lik(out).log_prob(torch.ones(1, F_, dtype=torch.float64)).sum().backward()
    inside = (special.expit(out[0, 0].detach().numpy()) > floor) & (special.expit(out[0, 0].detach().numpy()) < 1 - floor)
    expected = np.where(inside, 1 - special.expit(out[0, 0].detach().numpy()), 0.0)  # d/dl log sigmoid(l)
    assert np.allclose(out.grad[0, 0].numpy(), expected)
    assert not inside.all() and inside.any()


@pytest.mark.parametrize("floor", [-1e-3, 0.5, 1.0])
def test_bernoulli_probability_floor_outside_0_to_half_is_refused(floor):
    with pytest.raises(SpecError, match="probability_floor"):
        load_spec(model="bernoulli_mlp", overrides=[f"model.likelihood.probability_floor={floor}"])

def _cb_log_normalizer(lam):
    """log C(lambda), C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), C(1/2) = 2, in 50-digit arithmetic."""
    mpmath.mp.dps = 50
    lam = mpmath.mpf(lam)
    if lam == mpmath.mpf("0.5"):
        return float(mpmath.log(2))
    return float(mpmath.log(2 * mpmath.atanh(1 - 2 * lam) / (1 - 2 * lam)))


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.499, 0.4999999, 0.5, 0.5000001, 0.501, 0.7, 0.97])
def test_continuous_bernoulli_with_its_normalizer(lam):
    lik = LIKELIHOODS.build({"kind": "continuous_bernoulli"}, (1,)).double()
    logit = math.log(lam) - math.log1p(-lam)
    out = torch.full((1, 1, 1), logit, dtype=torch.float64)
    for x in (0.0, 0.25, 0.9, 1.0):
        expected = x * math.log(lam) + (1 - x) * math.log1p(-lam) + _cb_log_normalizer(lam)
        got = lik(out).log_prob(torch.tensor([[x]], dtype=torch.float64)).item()
        assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("mode", ["fixed", "shared", "per_feature", "decoder"])
@pytest.mark.parametrize("kind, scipy_dist", [("gaussian", stats.norm), ("laplace", stats.laplace), ("student_t", None)])
def test_location_scale_likelihoods(kind, scipy_dist, mode):
    lik, out = likelihood(kind, scale=mode, initial_scale=0.3, min_scale=0.01)
    with torch.no_grad():
        if mode in ("shared", "per_feature"):
            lik.raw_scale.normal_()  # a learned value other than the initial one
    raw = out[:, 1].numpy() if mode == "decoder" else lik.raw_scale.detach().numpy()
    scale = softplus(raw) + 0.01
    loc = out[:, 0].numpy()
    x = torch.randn(4, F_, dtype=torch.float64)
    if kind == "student_t":
        expected = stats.t.logpdf(x.numpy(), 3.0, loc, scale).sum(-1)
    else:
        expected = scipy_dist.logpdf(x.numpy(), loc, scale).sum(-1)
    assert np.allclose(lik(out).log_prob(x).detach().numpy(), expected)
    if mode == "fixed":
        assert np.allclose(scale, 0.3, rtol=1e-6) and not list(lik.parameters())  # the scale asked for


def test_beta_likelihood():
    lik, out = likelihood("beta")
    a, b = softplus(out[:, 0].numpy()) + 1e-4, softplus(out[:, 1].numpy()) + 1e-4
    x = torch.rand(4, F_, dtype=torch.float64) * 0.98 + 0.01
    assert np.allclose(lik(out).log_prob(x).numpy(), stats.beta.logpdf(x.numpy(), a, b).sum(-1))


def test_categorical_likelihood():
    lik, out = likelihood("categorical")
    assert out.shape == (4, 256, F_)
    x = torch.randint(0, 256, (4, F_)).double()
    logp = special.log_softmax(out.numpy(), axis=1)
    expected = np.take_along_axis(logp, x.long().numpy()[:, None, :], 1)[:, 0].sum(-1)
    assert np.allclose(lik(out).log_prob(x).numpy(), expected)
    # the 256 levels of one feature sum to one
    levels = torch.arange(256, dtype=torch.float64)[:, None].expand(256, F_)
    total = torch.logsumexp(lik(out[:1].expand(256, -1, -1)).base_dist.log_prob(levels), 0)
    assert torch.allclose(total, torch.zeros(F_, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("levels", [1, 16, 255])
def test_binomial_likelihood(levels):
    lik, out = likelihood("binomial", levels=levels)
    assert lik.outputs == 1 and lik.domain.bounds == (0.0, levels)
    out = out * 4  # logits far from 0 as well
    x = torch.tensor(np.random.default_rng(levels).integers(0, levels + 1, (4, F_)), dtype=torch.float64)
    x[0] = torch.tensor([0, levels, 0, levels, levels // 2, 1], dtype=torch.float64)
    p = special.expit(out[:, 0].numpy())
    expected = stats.binom.logpmf(x.numpy(), levels, p).sum(-1)
    assert np.allclose(lik(out).log_prob(x).numpy(), expected, rtol=1e-10, atol=1e-8)
    assert np.allclose(lik.mean(out).numpy(), levels * p)
    # the gradient in the logits is x - L p (float64 autograd against the closed form)
    logits = out.clone().requires_grad_(True)
    lik(logits).log_prob(x).sum().backward()
    assert np.allclose(logits.grad[:, 0].numpy(), x.numpy() - levels * p)
    # float32: the binomial coefficient in float64 keeps a 784-pixel image exact to 1e-3 nats at L = 255
    lik32 = LIKELIHOODS.build({"kind": "binomial", "levels": levels}, (784,))
    logits32 = torch.randn(2, 1, 784) * 3
    x32 = torch.tensor(np.random.default_rng(1).integers(0, levels + 1, (2, 784)), dtype=torch.float32)
    exact = stats.binom.logpmf(x32.numpy(), levels, special.expit(logits32[:, 0].double().numpy())).sum(-1)
    assert np.allclose(lik32(logits32).log_prob(x32).double().numpy(), exact, atol=2e-3)


@pytest.mark.parametrize("levels", [1, 16, 255])
def test_beta_binomial_likelihood(levels):
    lik, out = likelihood("beta_binomial", levels=levels, initial_concentration=3.0)
    with torch.no_grad():
        lik.raw_concentration.normal_()  # a learned concentration per feature
    out = out * 4
    x = torch.tensor(np.random.default_rng(levels).integers(0, levels + 1, (4, F_)), dtype=torch.float64)
    p = special.expit(out[:, 0].numpy())
    c = softplus(lik.raw_concentration.detach().numpy()) + 1e-4
    expected = stats.betabinom.logpmf(x.numpy(), levels, np.maximum(p * c, 1e-8), np.maximum((1 - p) * c, 1e-8)).sum(-1)
    assert np.allclose(lik(out).log_prob(x).detach().numpy(), expected, rtol=1e-10, atol=1e-8)
    assert np.allclose(lik.mean(out).numpy(), levels * p)


def test_level_likelihoods_take_their_levels():
    """categorical and discretized_logistic over 0..L, with L given (training sets it from the data)."""
    lik, out = likelihood("categorical", levels=16)
    assert out.shape == (4, 17, F_) and lik.domain.description == "integer levels 0..16"
    x = torch.randint(0, 17, (4, F_)).double()
    logp = special.log_softmax(out.numpy(), axis=1)
    expected = np.take_along_axis(logp, x.long().numpy()[:, None, :], 1)[:, 0].sum(-1)
    assert np.allclose(lik(out).log_prob(x).numpy(), expected)
    assert not lik.domain.contains(torch.tensor([17.0, -1.0, 2.5])).any()
    assert torch.allclose(lik.encoder_input(torch.tensor([16.0])), torch.tensor([1.0]))

    lik, out = likelihood("discretized_logistic", components=3, levels=16)
    params = out.movedim(1, -1).numpy()
    logits, loc, scale = params[..., :3], np.tanh(params[..., 3:6]), softplus(params[..., 6:]) + 1e-3
    x = np.array([0, 1, 7, 8, 15, 16], dtype=np.float64)[None].repeat(4, 0)
    expected = _discretized_logistic_reference(x, logits, loc, scale, levels=16).sum(-1)
    assert np.allclose(lik(out).log_prob(torch.tensor(x)).numpy(), expected, atol=1e-6)
    levels = torch.arange(17, dtype=torch.float64)[:, None].expand(17, F_)
    d = lik(out[:1].expand(17, -1, -1)).base_dist
    p = d.log_prob(levels).exp()
    assert torch.allclose(p.sum(0), torch.ones(F_, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(lik.mean(out[:1])[0], (levels * p).sum(0), atol=1e-9)  # the mean over 0..16


def _discretized_logistic_reference(x, logits, loc, scale, levels=255):
    """P(x) for x in 0..L as differences of logistic CDFs, in float64 with scipy."""
    xs = 2 * x / levels - 1
    upper = np.where(x == levels, np.inf, xs + 1 / levels)
    lower = np.where(x == 0, -np.inf, xs - 1 / levels)
    mass = stats.logistic.cdf(upper[..., None], loc, scale) - stats.logistic.cdf(lower[..., None], loc, scale)
    return np.log((special.softmax(logits, -1) * mass).sum(-1))


def test_discretized_logistic_likelihood():
    lik, out = likelihood("discretized_logistic", components=3)
    assert lik.outputs == 9
    params = out.movedim(1, -1).numpy()
    logits, loc, scale = params[..., :3], np.tanh(params[..., 3:6]), softplus(params[..., 6:]) + 1e-3
    x = np.array([0, 1, 17, 128, 254, 255], dtype=np.float64)[None].repeat(4, 0)
    expected = _discretized_logistic_reference(x, logits, loc, scale).sum(-1)
    got = lik(out).log_prob(torch.tensor(x)).numpy()
    assert np.allclose(got, expected, atol=1e-6)
    # normalized over the 256 levels, also with sharp components deep in the tails
    sharp = out.clone()
    sharp[:, 6:] = -8.0
    levels = torch.arange(256, dtype=torch.float64)[:, None].expand(256, F_)
    dist = lik(sharp[:1].expand(256, -1, -1)).base_dist
    assert torch.allclose(torch.logsumexp(dist.log_prob(levels), 0), torch.zeros(F_, dtype=torch.float64), atol=1e-4)


def test_count_likelihoods():
    x = torch.tensor(np.random.default_rng(0).poisson(3.0, (4, F_)), dtype=torch.float64)
    x[0, :3] = 0
    lik, out = likelihood("poisson")
    rate = softplus(out[:, 0].numpy()) + 1e-8
    assert np.allclose(lik(out).log_prob(x).numpy(), stats.poisson.logpmf(x.numpy(), rate).sum(-1))

    lik, out = likelihood("negative_binomial", initial_dispersion=2.0)
    mu, theta = softplus(out[:, 0].numpy()) + 1e-8, softplus(lik.raw_theta.detach().numpy()) + 1e-8
    assert np.allclose(theta, 2.0 + 1e-8)
    nb = stats.nbinom.logpmf(x.numpy(), theta, theta / (theta + mu))
    assert np.allclose(lik(out).log_prob(x).detach().numpy(), nb.sum(-1))

    lik, out = likelihood("zinb", initial_dispersion=2.0)
    mu, gate = softplus(out[:, 0].numpy()) + 1e-8, special.expit(out[:, 1].numpy())
    nb_pmf = stats.nbinom.pmf(x.numpy(), theta, theta / (theta + mu))
    zinb = np.where(x.numpy() == 0, np.log(gate + (1 - gate) * nb_pmf), np.log1p(-gate) + np.log(nb_pmf))
    assert np.allclose(lik(out).log_prob(x).detach().numpy(), zinb.sum(-1))
    assert (x.numpy() == 0).any() and (x.numpy() > 0).any()


def test_decoder_is_sized_from_the_likelihood():
    for kind, outputs, params in (("bernoulli", 1, {}), ("beta", 2, {}), ("categorical", 256, {}), ("zinb", 2, {}),
                                  ("categorical", 17, {"levels": 16}), ("binomial", 1, {"levels": 16})):
        spec = Spec.from_dict({"model": {"latent_dim": 2, "likelihood": {"kind": kind, **params}}}).model
        vae = build_vae(spec, (3, 4))
        assert vae.decoder.out_shape == (outputs, 3, 4)
        assert vae.decoder(torch.randn(5, 2)).shape == (5, outputs, 3, 4)
    spec = Spec.from_dict({"model": {"latent_dim": 2, "likelihood": {"kind": "discretized_logistic", "components": 4}}}).model
    assert build_vae(spec, (7,)).decoder.out_shape == (12, 7)


# --- priors -----------------------------------------------------------------------------


def vae_with(prior=None, posterior=None, latent_dim=2, data_shape=(3,)):
    model = {"latent_dim": latent_dim, "likelihood": {"kind": "gaussian"}}
    if prior:
        model["prior"] = prior
    if posterior:
        model["posterior"] = posterior
    torch.manual_seed(0)
    return build_vae(Spec.from_dict({"model": model}).model, data_shape)


PRIOR_TABLES = [
    {"kind": "standard_normal"},
    {"kind": "learned_normal"},
    {"kind": "mixture", "components": 3},
    {"kind": "vamp", "components": 4},
    {"kind": "flow", "layers": 2, "hidden": [8]},
    {"kind": "flow", "transform": "spline_autoregressive", "layers": 1, "hidden": [8]},
    {"kind": "student_t", "df": 3.0},
    {"kind": "laplace"},
]


@pytest.mark.parametrize("table", PRIOR_TABLES, ids=lambda t: t["kind"] + ("_spline" if "transform" in t else ""))
def test_every_prior_is_normalized(table):
    """Quadrature on a 2-D grid: the density integrates to 1 (heavy tails: up to their mass outside)."""
    vae = vae_with(prior=table)
    if table["kind"] == "learned_normal":
        with torch.no_grad():
            vae.prior.loc.copy_(torch.tensor([0.5, -1.0]))
            vae.prior.raw_scale.copy_(torch.tensor([0.2, -0.3]))
    half, step = 16.0, 0.04
    axis = torch.arange(-half + step / 2, half, step)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        log_p = vae.prior().log_prob(grid)
    mass = (log_p.double().exp().sum() * step**2).item()
    outside = 2 * stats.t.sf(half, 3.0) * 2 if table["kind"] == "student_t" else 0.0
    assert mass == pytest.approx(1.0 - outside, abs=2e-3)


@pytest.mark.parametrize("posterior", [{"kind": "diagonal_normal"}, {"kind": "iaf", "steps": 1, "hidden": [8], "context": 3}])
def test_vamp_is_the_average_of_the_encoders_posteriors(posterior):
    vae = vae_with(prior={"kind": "vamp", "components": 5}, posterior=posterior)
    z = torch.randn(7, 2)
    with torch.no_grad():
        p = vae.prior().log_prob(z)
        per_component = torch.stack(
            [vae.posterior(vae.encoder(u[None])).log_prob(z.clone()) for u in vae.prior.inputs()], -1
        )
    assert torch.allclose(p, torch.logsumexp(per_component, -1) - math.log(5), atol=1e-4)


MIXTURE_PRIORS = [
    ({"kind": "mixture", "components": 3}, None),
    ({"kind": "vamp", "components": 4}, {"kind": "diagonal_normal"}),
    ({"kind": "vamp", "components": 4}, {"kind": "low_rank_normal", "rank": 1}),
    ({"kind": "vamp", "components": 4}, {"kind": "iaf", "steps": 1, "hidden": [8], "context": 3}),
]


def _mixture_reference(vae, z):
    """log p(z) of a mixture prior in float64, one component at a time: log sum_k pi_k p_k(z)."""
    prior = vae.prior
    if prior.__class__.__name__ == "MixturePrior":
        scales = torch.nn.functional.softplus(prior.raw_scales)
        per_component = [torch.distributions.Normal(prior.locs[k], scales[k]).log_prob(z).sum(-1)
                         for k in range(prior.components)]
        log_weights = torch.log_softmax(prior.logits, -1)
    else:
        vae.eval()
        per_component = [vae.posterior(vae.encoder(u[None])).log_prob(z.clone()) for u in prior.inputs()]
        log_weights = torch.full((prior.components,), -math.log(prior.components), dtype=z.dtype)
    return torch.logsumexp(torch.stack(per_component, -1) + log_weights, -1)


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("prior, posterior", MIXTURE_PRIORS, ids=lambda t: t and "_".join(map(str, t.values()))[:22])
def test_mixture_priors_score_every_component_exactly(prior, posterior, extreme):
    """The mixture and the VampPrior (each posterior family) score z against all components in
    one expression (matrix products for diagonal Gaussians): value and gradients equal a
    float64 sum over the components one at a time, on the plate-expanded prior too, also
    with components far from 0 and scales of 1e-4 to 1e-3, where the expansion's terms nearly cancel."""
    vae = vae_with(prior=prior, posterior=posterior, latent_dim=3)
    if extreme:
        with torch.no_grad():
            if prior["kind"] == "mixture":
                vae.prior.locs.mul_(100.0)
                vae.prior.raw_scales.fill_(-9.0)  # scale softplus(-9) = 1.2e-4
            else:
                last = vae.encoder.net[-1]
                last.weight.mul_(1e-3)
                # the encoder computes the locations in float32: far from 0 they are rounded to
                # ~1e-7 of their size, which must stay small against the scale (here 2.5e-3)
                last.bias[:3] = torch.tensor([20.0, -12.0, 8.0])
                last.bias[3:6] = -6.0
    reference = vae_with(prior=prior, posterior=posterior, latent_dim=3).double()
    reference.load_state_dict({k: v.double() for k, v in vae.state_dict().items()})
    with torch.no_grad():
        centres = vae.prior().sample((6,))
    z = (centres + 1e-4 * torch.randn(6, 3) if extreme else torch.randn(6, 3)).requires_grad_()
    z_reference = z.detach().double().requires_grad_()

    expected = _mixture_reference(reference, z_reference)
    grads_expected = torch.autograd.grad(expected.sum(), [z_reference, *reference.prior.parameters(), *reference.encoder.parameters()],
                                         allow_unused=True)
    vae.eval()
    for expand in (False, True):
        p = vae.prior()
        log_p = (p.expand((6,)) if expand else p).log_prob(z)
        assert log_p.dtype == torch.float32
        assert torch.allclose(log_p.double(), expected, rtol=1e-5, atol=1e-3), (log_p, expected)
        grads = torch.autograd.grad(log_p.sum(), [z, *vae.prior.parameters(), *vae.encoder.parameters()], allow_unused=True)
        for g, g_expected in zip(grads, grads_expected):
            if g_expected is None:
                assert g is None or not g.any()
                continue
            # extreme: d log p / d loc = (z - loc) / s^2 carries the float32 rounding of the
            # encoder's loc (~1e-6 here) amplified by 1 / s^2: up to ~3e-3 of the largest
            # gradient through the encoder, on the broadcast form (iaf, low_rank) as well
            tolerance = (1e-2 if extreme else 1e-4) * g_expected.abs().max().item() + 1e-4
            assert torch.allclose(g.double(), g_expected, atol=tolerance), (g, g_expected)
    draws = torch.randn(2, 6, 3)  # (samples, batch, latent), as importance sampling scores them
    with torch.no_grad():
        assert vae.prior().log_prob(draws).shape == (2, 6)


def test_a_component_that_cannot_be_scored_counts_as_density_zero():
    """A mixture component whose density at z overflows (here an affine flow with scale 1e-30,
    whose inverse squared is inf; a VampPrior's IAF components do this far from their mass) adds
    nothing to the mixture and passes no NaN into the gradients."""
    from pyro_vae.model.priors import _Mixture

    loc = torch.tensor([[0.0, 0.0], [1.0, -1.0]], requires_grad=True)
    scale = torch.tensor([[1e-30, 1e-30], [0.5, 2.0]], requires_grad=True)
    base = pyro.distributions.Normal(torch.zeros(2, 2), 1.0).to_event(1)
    components = pyro.distributions.TransformedDistribution(base, [T.AffineTransform(loc, scale, event_dim=1)])
    mixture = _Mixture(pyro.distributions.Categorical(logits=torch.zeros(2)), components)
    z = torch.randn(5, 2)
    log_p = mixture.log_prob(z)
    expected = math.log(0.5) + torch.distributions.Normal(loc[1], scale[1]).log_prob(z).sum(-1)
    assert torch.allclose(log_p, expected, atol=1e-5)
    grad_loc, grad_scale = torch.autograd.grad(log_p.sum(), [loc, scale])
    expected_loc, expected_scale = torch.autograd.grad(expected.sum(), [loc, scale])
    assert torch.isfinite(grad_loc).all() and torch.isfinite(grad_scale).all()
    assert torch.allclose(grad_loc, expected_loc, atol=1e-5) and torch.allclose(grad_scale, expected_scale, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(mixture.log_prob(z), expected)


def test_an_expanded_mixture_scores_its_shared_gaussians_as_torch_does():
    """A data plate expands the mixture to (batch,): the expanded copy keeps the K Gaussians
    as built (``shared_components``) and scores z as torch's broadcast mixture does."""
    from pyro_vae.model.priors import _Mixture

    loc, scale, logits = torch.randn(3, 2), torch.rand(3, 2) + 0.5, torch.randn(3)
    components = pyro.distributions.Normal(loc, scale).to_event(1)
    mixture = _Mixture(pyro.distributions.Categorical(logits=logits), components)
    expanded = mixture.expand((4,))
    assert expanded.batch_shape == (4,) and expanded.shared_components is components
    z = torch.randn(5, 4, 2)
    expected = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=logits),
                                                     torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)).log_prob(z)
    assert torch.allclose(expanded.log_prob(z), expected, atol=1e-5)


def test_vamp_pseudo_inputs_are_trained():
    vae = vae_with(prior={"kind": "vamp", "components": 5})
    names = {n for n, _ in vae.named_parameters()}
    assert "prior.pseudo_inputs" in names
    assert not any(n.startswith("prior.encoder") for n in names)  # the encoder is not registered twice


def test_vamp_pseudo_inputs_are_a_parameter_from_construction_shaped_by_the_vae():
    """The u_k exist when the prior is built (torch's uninitialized parameter) and take
    the data's shape, N(0.05, 0.01^2) entries, when the VAE binds its prior."""
    from pyro_vae.model.priors import PRIORS

    prior = PRIORS.build({"kind": "vamp", "components": 3}, 2)
    assert isinstance(dict(prior.named_parameters())["pseudo_inputs"], torch.nn.UninitializedParameter)
    vae = vae_with(prior={"kind": "vamp", "components": 400}, data_shape=(5,))
    u = dict(vae.named_parameters())["prior.pseudo_inputs"]
    assert type(u) is torch.nn.Parameter and u.shape == (400, 5)
    assert abs(u.mean().item() - 0.05) < 4 * 0.01 / math.sqrt(u.numel()) and abs(u.std().item() - 0.01) < 1e-3


@pytest.mark.parametrize("likelihood, bounds", [("bernoulli", (0.0, 1.0)), ("poisson", (0.0, None)), ("gaussian", (None, None))])
def test_vamp_pseudo_inputs_stay_in_the_encoder_inputs_domain(likelihood, bounds):
    vae = small(likelihood={"kind": likelihood}, prior={"kind": "vamp", "components": 6})
    with torch.no_grad():
        vae.prior.pseudo_inputs.copy_(torch.linspace(-3, 5, 36).reshape(6, 6))
    u = vae.prior.inputs()
    lower, upper = bounds
    assert (lower is None or u.min() >= lower) and (upper is None or u.max() <= upper)
    assert (lower is not None or u.min() < -2) and (upper is not None or u.max() > 4)
    free = small(likelihood={"kind": likelihood}, prior={"kind": "vamp", "components": 6, "pseudo_inputs": "free"})
    with torch.no_grad():
        free.prior.pseudo_inputs.copy_(torch.linspace(-3, 5, 36).reshape(6, 6))
    assert torch.equal(free.prior.inputs(), free.prior.pseudo_inputs)


def test_vamp_prior_is_deterministic_under_encoder_dropout():
    vae = small(prior={"kind": "vamp", "components": 6}, encoder={"kind": "mlp", "hidden": [16], "dropout": 0.5})
    z = torch.randn(4, 8)
    vae.train()
    first, second = vae.prior().log_prob(z), vae.prior().log_prob(z)
    assert torch.equal(first, second)
    assert vae.encoder.training  # the encoder's own mode is left as it was
    vae.eval()
    assert torch.allclose(vae.prior().log_prob(z), first)


# --- posteriors ---------------------------------------------------------------------------


def test_iaf_log_density_matches_change_of_variables():
    """log q(z|x) = log N(z0; mu, sigma) - log|det dT/dz0|, with the Jacobian by finite differences."""
    torch.manual_seed(0)
    L = 3
    posterior = POSTERIORS.build({"kind": "iaf", "steps": 2, "hidden": [16], "context": 4}, L).double()
    h = torch.randn(posterior.encoder_outputs, dtype=torch.float64)
    with torch.no_grad():
        for flow in posterior.flows:  # move the flows away from the identity
            for p in flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
    q = posterior(h)
    loc, scale = posterior.loc_scale(h)
    z0 = loc + scale * torch.randn(L, dtype=torch.float64)
    transforms = q.transforms

    def flow(v):
        for t in transforms:
            v = t(v)
        return v

    with torch.no_grad():
        z = flow(z0)
        eps = 1e-6
        jacobian = torch.stack([(flow(z0 + eps * e) - flow(z0 - eps * e)) / (2 * eps) for e in torch.eye(L, dtype=torch.float64)], -1)
        expected = (stats.norm.logpdf(z0.numpy(), loc.numpy(), scale.numpy()).sum() - np.log(abs(np.linalg.det(jacobian.numpy()))))
        fresh = z.clone()  # not the cached sample: exercises the inverse
        assert q.log_prob(fresh).item() == pytest.approx(expected, abs=1e-6)
        sample = q.rsample()
        assert torch.isfinite(q.log_prob(sample))


def test_low_rank_posterior_covariance():
    posterior = POSTERIORS.build({"kind": "low_rank_normal", "rank": 2}, 3).double()
    h = torch.randn(2, posterior.encoder_outputs, dtype=torch.float64)
    q = posterior(h)
    loc, scale = posterior.loc_scale(h)
    W = h[:, 6:].reshape(2, 3, 2)
    cov = W @ W.transpose(-1, -2) + torch.diag_embed(scale**2)
    z = torch.randn(2, 3, dtype=torch.float64)
    expected = [stats.multivariate_normal.logpdf(z[i].numpy(), loc[i].numpy(), cov[i].numpy()) for i in range(2)]
    assert np.allclose(q.log_prob(z).numpy(), expected)


@pytest.mark.integration
def test_mismatched_data_and_likelihood_through_the_cli(tmp_path):
    from helpers import assert_one_line_error, run_cli

    zeros = tmp_path / "zeros.npz"
    np.savez(zeros, train=np.tile([0.0, 0.2, 0.7, 1.0], (40, 1)))
    code, _, stderr = run_cli("train", "--data", zeros, "--set", "model.likelihood.kind=beta", "--out", tmp_path / "r")
    assert_one_line_error(code, stderr, "beta", "strictly inside (0, 1)", "continuous_bernoulli")
    counts = tmp_path / "counts.npz"
    np.savez(counts, train=np.random.default_rng(0).poisson(400.0, (40, 4)))  # counts, not 8-bit levels
    code, _, stderr = run_cli("train", "--data", counts, "--model", "continuous_bernoulli", "--out", tmp_path / "r")
    assert_one_line_error(code, stderr, "continuous_bernoulli", "[0, 1]", "poisson")
    assert not (tmp_path / "r").exists()
