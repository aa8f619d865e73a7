"""The supervised-only baseline of semi-supervised training: q(y|x)'s classifier network,
fresh, fitted to the labelled examples alone by minimizing the cross-entropy
-(1/N_l) sum log q(y_n|x_n) (full batch, Adam). M2 (Kingma et al., 2014) is worth its
unlabelled data where its q(y|x) beats this network on held-out examples.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.networks import NETWORKS


def supervised_classifier(vae, classifier: dict, steps: int = 500, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """A new network of the ``classifier`` table's architecture (the spec's
    ``model.discrete.classifier``) trained on ``vae``'s labelled examples; it reads the
    encoder's input, as q(y|x) does. The caller's random stream is left untouched."""
    if vae.labelled_x is None:
        raise ValueError("the VAE holds no labelled examples (data.labelled)")
    x, y = vae.encoder_input(vae.labelled_x), vae.labelled_y
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = NETWORKS.build(classifier, vae.data_shape, (vae.classes,)).to(x.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()

