"""Memory refused up front: what a command will hold, estimated from its arguments and the
model before anything is allocated, against the memory available (RAM, and the free memory
of a GPU the work runs on). A command that cannot fit stops with one line naming the flag
or spec key to lower, instead of swapping, being killed, or failing half way.

The estimates are of float32 values (4 bytes each) and leave the slack in ``SLACK``: for a
training step, each of the B * K decoder outputs (B examples, K particles, ``outputs``
values per feature of a D-feature example) is held in the forward pass, its gradient in the
backward pass and about as much again in temporaries,

    bytes(step) ~= 4 * SLACK * B * K * (outputs * D + 2 * latent + hidden),

with ``hidden`` the widest layer of the networks.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..data.checks import available_memory
from ..errors import UserError
from ..infer.evaluate import BUDGET

FLOAT = 4  # bytes of a float32
SLACK = 3  # forward values, gradients and temporaries
MAX_RUNS = 100_000  # runs one comparison may plan


class TooLarge(UserError):
    """The work would not fit in memory; the message names what to lower."""


def available(device=None) -> int:
    """Bytes this process may still allocate: the RAM available, or a GPU's free memory."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def refuse_beyond(needed: float, what: str, lower: str, device=None) -> None:
    """Raise :class:`TooLarge` when ``needed`` bytes exceed what is available."""
    have = available(device)
    if needed > have:
        raise TooLarge(f"{what} needs about {_size(needed)} of memory, more than the {_size(have)} available"
                       f"{' on ' + str(device) if device is not None and torch.device(device).type != 'cpu' else ''}; "
                       f"lower {lower}")


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"


def particles(estimator: dict) -> int:
    """Samples per example an estimator table draws in one step (K, or num_particles)."""
    for key in ("k", "num_particles"):
        value = estimator.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 1


def widest_layer(*tables: dict) -> int:
    widths = [w for table in tables for w in (table.get("hidden") or []) if isinstance(w, int)]
    return max(widths, default=0)


def check_training_step(spec, vae, data_shape, device=None) -> None:
    """One training step of ``spec``'s batch size and estimator on ``vae`` must fit (see the
    module's docstring)."""
    batch, k = spec.inference.schedule.batch_size, particles(spec.inference.estimator)
    per_particle = (getattr(vae.likelihood, "outputs", 1) * math.prod(data_shape) + 2 * spec.model.latent_dim
                    + widest_layer(spec.model.encoder, spec.model.decoder))
    needed = FLOAT * SLACK * batch * k * per_particle
    key = "inference.estimator.k" if "k" in spec.inference.estimator else "inference.estimator.num_particles"
    refuse_beyond(needed, f"a training step ({batch} examples x {k} sample(s) each)",
                  f"{key} or inference.schedule.batch_size" if k > 1 else "inference.schedule.batch_size", device)


def codes_chunk(examples: int, samples: int, latent: int, budget: int = BUDGET) -> int:
    """``encode``: examples per encoder pass, so that one pass's ``samples`` draws (at most
    ``budget`` values, and what memory allows) fit; the draws go to the file pass by pass.
    The means and sds of every example are held (twice, as parts and joined). Refuses what
    cannot fit: those, or one example's draws."""
    refuse_beyond(FLOAT * 2 * examples * 3 * latent, f"the codes of {examples} examples", "$split")
    if not samples:
        return 2048
    per_example = FLOAT * SLACK * samples * latent  # the draws, their transpose, the copy written
    spare = available() - FLOAT * 2 * examples * 3 * latent
    refuse_beyond(per_example, f"{samples} draws of one example", "$samples")
    return max(1, min(2048, budget // (samples * latent), int(spare // per_example)))


def samples_chunk(n: int, features: int, latent: int, budget: int = BUDGET) -> int:
    """``sample``: draws per decoder pass, a multiple of 16 (at most ``budget`` decoded
    values, and what memory allows); the n draws of z are held, the decoded means go to the
    file pass by pass. Refuses the z when they cannot fit."""
    refuse_beyond(FLOAT * 2 * n * latent, f"{n} draws of z", "$n")
    per_draw = FLOAT * SLACK * (features + latent)
    spare = available() - FLOAT * 2 * n * latent
    return max(16, min(budget // features, int(spare // per_draw)) // 16 * 16)


def check_runs(cells: int, seeds: int, examples: Optional[int]) -> None:
    """``compare``: the planned runs, and the per-example estimates each keeps for the report."""
    runs = cells * seeds
    if runs > MAX_RUNS:
        raise TooLarge(f"{cells} cell(s) x {seeds} seed(s) = {runs:,} runs, more than the {MAX_RUNS:,} a comparison "
                       "plans; lower $seeds")
    refuse_beyond(8 * 2 * runs * (examples or 0), f"the per-example estimates of {runs:,} runs", "$seeds or --limit")
