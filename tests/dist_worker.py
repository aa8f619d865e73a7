"""Run under torchrun by tests/test_distributed.py (or alone, as the one-process reference):
trains a small VAE whose posterior is a point mass, so every latent "draw" is the same in
any process, and writes the weights after 1 step and after 20 steps to OUT.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py OUT
    python tests/dist_worker.py OUT
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # user_components, by import path

from pyro_vae import distributed  # noqa: E402
from pyro_vae.data import Dataset  # noqa: E402
from pyro_vae.infer.train import Trainer  # noqa: E402
from pyro_vae.model import build_vae  # noqa: E402
from pyro_vae.spec import Spec  # noqa: E402


def weights_after(epochs: int, num_data: int, batch_size: int, optimizer: dict, layers: bool = False,
                  covariates: bool = False, seen: list = None) -> dict:
    """The weights after training; with ``covariates`` the model conditions on c = (a category
    of 3, a continuous value) everywhere (decoder, encoder, prior network), and ``seen``
    collects, for every encoder call, (the rows of x it read, the c it read with them)."""
    point = {"kind": "user_components:PointPosterior"}
    upper = [{"latent_dim": 2, "posterior": point, "encoder": {"kind": "mlp", "hidden": [8]},
              "prior_network": {"kind": "mlp", "hidden": [8]}}] if layers else []
    spec = Spec.from_dict({
        "model": {"latent_dim": 3, "likelihood": {"kind": "gaussian"}, "posterior": point, "upper_layers": upper,
                  "encoder": {"kind": "mlp", "hidden": [16]}, "decoder": {"kind": "mlp", "hidden": [16]},
                  **({"condition": {"prior": True}} if covariates else {})},
        "data": {"name": "digits", **({"covariates": ["k", "u"]} if covariates else {})},
        "inference": {"optimizer": optimizer,
                      "schedule": {"epochs": epochs, "batch_size": batch_size, "seed": 3, "device": "cpu"}},
    })
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_data + 8, 5, generator=generator, dtype=torch.float64)
    c = torch.stack([torch.randint(3, (num_data + 8,), generator=generator).double(),
                     torch.randn(num_data + 8, generator=generator, dtype=torch.float64)], -1)
    data = Dataset({"train": x[:num_data], "valid": x[num_data:]}, {}, (5,), "synthetic",
                   covariates={"train": c[:num_data], "valid": c[num_data:]} if covariates else {})
    torch.manual_seed(1)
    vae = build_vae(spec.model, (5,), num_data=num_data, covariates=[3, 0] if covariates else ()).double()
    if covariates:
        vae.conditioning.observe(c[:num_data])
        if seen is not None:
            vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(
                (args[0].detach().clone(), vae.conditioning.current.detach().clone())))
    if distributed.current().rank == 1:  # a different start on rank 1: the broadcast must undo it
        with torch.no_grad():
            for p in vae.parameters():
                p.add_(1.0)
    trainer = Trainer(vae, data, spec.inference, progress=False, log=lambda _: None)
    trainer.fit()
    return {name: t.detach().clone() for name, t in vae.state_dict().items()}


def main(out: str) -> None:
    group = distributed.init()
    distributed.use_device(torch.device("cpu"), timeout=60)
    results = {
        "one_step": weights_after(1, 40, 40, {"kind": "adam", "lr": 1e-2}),  # N = B: one step
        "twenty_steps": weights_after(10, 80, 40, {"kind": "adam", "lr": 1e-2}),  # 2 steps per epoch
        "sgd_one_step": weights_after(1, 40, 40, {"kind": "sgd", "lr": 1e-3, "momentum": 0.0}),
        "two_layers_one_step": weights_after(1, 40, 40, {"kind": "adam", "lr": 1e-2}, layers=True),  # z2 above z1
    }
    seen: list = []  # this rank's (x rows, c) as its encoder read them
    results["covariates_two_steps"] = weights_after(1, 80, 40, {"kind": "adam", "lr": 1e-2}, layers=True,
                                                    covariates=True, seen=seen)
    torch.save(seen, Path(out) / f"seen_w{group.world_size}_rank{group.rank}.pt")
    if group.is_main:
        torch.save(results, Path(out) / f"weights_w{group.world_size}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
