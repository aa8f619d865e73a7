"""The optimizers' arithmetic against independent computations."""

import math

import pytest
import torch

from pyro_vae.infer.optim import OPTIMIZERS


def normgrad_adam_by_hand(start, gradients, lr, beta1, beta2, eps):
    """Tomczak & Welling's AdamNormGrad step written out (jmtomczak/vae_vampprior,
    utils/optimizer.py): g <- g / (||g|| + 1e-7), then Adam with bias corrections, eps added
    to the bias-corrected root as torch's Adam does (their code adds it to the uncorrected
    root: the same step for eps -> 0)."""
    p, m, v = start.clone().double(), torch.zeros_like(start).double(), torch.zeros_like(start).double()
    for t, g in enumerate(gradients, start=1):
        g = g.double() / (g.double().norm() + 1e-7)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1 ** t) * m / (v.sqrt() / math.sqrt(1 - beta2 ** t) + eps)
    return p


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_adam_normgrad_normalizes_each_tensor_then_takes_adams_step(scale):
    """Five steps on two tensors whose gradients differ in size by 10^3, at three overall
    scales: each follows the step written out by hand with its own tensor's norm (a norm
    taken over both tensors would shrink the small one's steps); a gradient 10^10 times
    larger moves the parameters as far as a small one."""
    torch.manual_seed(0)
    start, other_start = torch.randn(7, 3), torch.randn(4)
    gradients = [scale * (k + 1) * torch.randn(7, 3) for k in range(5)]
    other_gradients = [1e3 * scale * torch.randn(4) for _ in range(5)]
    p, other = torch.nn.Parameter(start.clone()), torch.nn.Parameter(other_start.clone())
    optimizer = OPTIMIZERS.build({"kind": "adam_normgrad", "lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-3},
                                 [p, other])
    for g, h in zip(gradients, other_gradients):
        p.grad, other.grad = g.clone(), h.clone()
        optimizer.step()
    expected = normgrad_adam_by_hand(start, gradients, 0.01, 0.8, 0.99, 1e-3)
    assert torch.allclose(p.detach().double(), expected, rtol=0, atol=2e-6)
    expected = normgrad_adam_by_hand(other_start, other_gradients, 0.01, 0.8, 0.99, 1e-3)
    assert torch.allclose(other.detach().double(), expected, rtol=0, atol=2e-6)
    if scale == 1.0:  # the same steps from gradients 1e4 and 1e-6 times these (up to the 1e-7 in the norm)
        for other in (1e4, 1e-6):
            q = torch.nn.Parameter(start.clone())
            optimizer = OPTIMIZERS.build({"kind": "adam_normgrad", "lr": 0.01, "beta1": 0.8, "beta2": 0.99,
                                          "eps": 1e-3}, [q])
            for g in gradients:
                q.grad = other * g
                optimizer.step()
            assert torch.allclose(q.detach(), p.detach(), rtol=0, atol=1e-3 if other < 1 else 1e-6)


def test_adam_takes_eps():
    p = torch.nn.Parameter(torch.zeros(2))
    assert OPTIMIZERS.build({"kind": "adam", "eps": 1e-4}, [p]).param_groups[0]["eps"] == 1e-4
    assert OPTIMIZERS.build({"kind": "adam"}, [p]).param_groups[0]["eps"] == 1e-8
