"""VaDE's initialization of a Gaussian-mixture VAE (Jiang et al., 2017, section 3.3).

Before the ELBO is maximized, the encoder and decoder are pretrained as an autoencoder:
z = E_q[z|x], the mean of q(z|x) (a draw from it where q has no closed-form mean), is
decoded, with the loss -log p(x | z) (the model's own likelihood, so the decoder starts
where the VAE's reconstruction term wants it). A Gaussian mixture with one component per
class, fitted by EM to the training codes (scikit-learn's ``GaussianMixture``; the best of
``fits`` runs from different k-means starts, by the mixture's likelihood of the codes: no
labels read), then sets the class-conditional prior, p(z|y) = N(mu_y, Sigma_y), Sigma_y
diagonal or full as the prior holds it (``model.discrete.covariance``; a full Sigma_y as
its Cholesky factor); and q(y|x), which VaDE reads off the mixture as p(y|z = E_q[z|x]),
is here a network of its own: it is fitted to the mixture's responsibilities by minimizing
the cross-entropy -sum_y r_y(x) log q(y|x). p(y) stays uniform, as it is in the model.
Without this start the components compete from near-equal means, and on MNIST the GMVAE
stays below k-means on the pixels (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..model.numerics import softplus_inverse
from .evaluate import closed_form_mean

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture

BATCH = 256
LR = 1e-3


def _batches(n: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, BATCH):
        yield order[start : start + BATCH]


def _code(vae, x: torch.Tensor) -> torch.Tensor:
    """E_q[z|x] (a reparameterized draw where q has no closed-form mean)."""
    q = vae.q_z(vae.encoder_input(x))
    mean = closed_form_mean(q)
    return q.rsample() if mean is None else mean


def autoencoder_codes(vae, x, chunk: int = 4096) -> torch.Tensor:
    """The codes of every row of x, in chunks."""
    with torch.no_grad():
        return torch.cat([_code(vae, x[i : i + chunk]) for i in range(0, len(x), chunk)])


def set_prior(prior, mixture: GaussianMixture) -> None:
    """p(z|y) := the mixture's components (``prior``: a ClassConditionalPrior whose
    covariance is the mixture's, diagonal or full)."""
    dtype = prior.loc.dtype
    with torch.no_grad():
        prior.loc.copy_(torch.as_tensor(mixture.means_, dtype=dtype))
        if prior.covariance == "full":
            tril = torch.linalg.cholesky(torch.as_tensor(mixture.covariances_, dtype=torch.float64)).to(dtype)
            prior.raw_scale.copy_(softplus_inverse(torch.diagonal(tril, dim1=-2, dim2=-1)))
            prior.off_diagonal.copy_(torch.tril(tril, -1))
        else:
            prior.raw_scale.copy_(softplus_inverse(torch.as_tensor(np.sqrt(mixture.covariances_), dtype=dtype)))


def vade_initialize(vae, x, epochs: int, seed: int = 0, log=None, fits: int = 1) -> GaussianMixture:
    """Pretrain ``vae``'s encoder and decoder on the training examples ``x`` (a tensor or a
    streamed split, indexable by rows) for ``epochs``, set p(z|y) from a Gaussian mixture
    fitted to the codes (the likeliest of ``fits`` EM runs) and fit q(y|x) to its
    responsibilities (see the module docstring). The caller's random streams are left
    untouched. Returns the fitted mixture."""
    say = log or (lambda message: None)
    n, classes = len(x), vae.classes
    device = vae.class_logits.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        autoencoder = [p for m in (vae.encoder, vae.posterior, vae.decoder, vae.likelihood) for p in m.parameters()]
        optimizer = torch.optim.Adam(autoencoder, lr=LR)
        for epoch in range(epochs):
            total = 0.0
            for rows in _batches(n, generator):
                xb = x[rows.to(device)]
                z = _code(vae, xb)
                loss = -vae.p_x_given(z, None, xb).log_prob(xb).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
            say(f"vade pretraining: epoch {epoch + 1}/{epochs}, reconstruction -log p(x|z) {total / n:.2f} nats")
        codes = autoencoder_codes(vae, x).cpu().double().numpy()
        from sklearn.mixture import GaussianMixture  # here, not at the top: only VaDE needs scikit-learn's ~1 s import

        covariance = {"diagonal": "diag", "full": "full"}[vae.prior.covariance]
        mixture = GaussianMixture(classes, covariance_type=covariance, random_state=seed, reg_covar=1e-4,
                                  n_init=fits).fit(codes)
        set_prior(vae.prior, mixture)
        targets = torch.as_tensor(mixture.predict_proba(codes), dtype=vae.prior.loc.dtype, device=device)
        optimizer = torch.optim.Adam(vae.classifier.parameters(), lr=LR)
        for epoch in range(max(epochs, 1)):
            total = 0.0
            for rows in _batches(n, generator):
                logits = vae.q_y_logits(x[rows.to(device)])
                loss = -(targets[rows.to(device)] * F.log_softmax(logits, -1)).sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
        say(f"vade initialization: {classes} mixture components fitted to {n} codes "
            f"({vae.prior.covariance} covariance, the likeliest of {fits} fits: log-likelihood "
            f"{mixture.score(codes):.2f} nats per code); q(y|x) fitted to their responsibilities (cross-entropy "
            f"{total / n:.3f}, entropy floor "
            f"{-(targets * targets.clamp_min(1e-12).log()).sum(-1).mean().item():.3f} nats)")
    return mixture

