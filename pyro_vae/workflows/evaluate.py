"""``pyro-vae evaluate``: a run's held-out log p(x) by importance sampling, written to
RUN/evaluation/; and the held-out examples every command that reads a run uses."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..data import load_data
from ..errors import DataError
from ..files import atomic_write, atomic_write_json, output_folder
from ..infer.evaluate import BUDGET, PerExample, importance_sample_sharded
from ..infer.metrics import classification_summary, summarize
from ..devices import resolve_device
from ..runs import load_run, record_outputs
from ..spec import DataSpec, data_table


@dataclass
class Heldout:
    """Examples to score, prepared as the run's data were: ``x`` (a tensor, or a streamed
    split), their ``labels``, ``index`` (their rows in the source's array), the data's
    ``source`` and ``tag`` (a file-name-safe name for outputs: the split for the run's
    own data, else the other data's name and the split), and ``condition``, their covariates
    coded as in training where the model conditions on covariates."""

    x: object
    labels: Optional[Tensor]
    index: np.ndarray
    source: str
    tag: str
    label_names: Optional[list] = None
    condition: Optional[Tensor] = None  # each example's coded covariates c (n, K), where the model reads them


def run_dataset(run, data: Optional[str] = None, device="cpu"):
    """The run's data, or ``data`` (a data set or a file, read with the run's data options),
    prepared with the run's own normalization and standardization (kept in its checkpoint)."""
    spec = run.spec.data
    if data is not None:
        spec = DataSpec(**{**spec.model_dump(exclude={"name", "path"}), **data_table(data)})
    return load_data(spec, run.spec.inference.schedule.seed, likelihood=run.vae.likelihood, device=device,
                     preprocessing=run.preprocessing, coding=run.coding)


def heldout(run, data: Optional[str] = None, split: str = "valid", limit: Optional[int] = None, seed: int = 0,
            device="cpu", dataset=None) -> Heldout:
    """A split of :func:`run_dataset` (``dataset``, when given, is that, already read).

    A split with as many features as the run's data is reshaped to the run's shape.
    ``limit`` takes a random subset (seeded, so every estimator of a comparison sees the
    same examples); files can be sorted by class, so never the first N.
    """
    if dataset is None:
        dataset = run_dataset(run, data, device)
    x = dataset.scored(split, run.spec.inference.schedule.seed)
    labels, condition = dataset.labels.get(split), dataset.covariates.get(split)
    index = dataset.origin.get(split, np.arange(len(x)))
    if tuple(x.shape[1:]) != run.vae.data_shape:
        if math.prod(x.shape[1:]) != math.prod(run.vae.data_shape):
            raise DataError(
                f"{dataset.source}: examples of shape {tuple(x.shape[1:])} do not fit the run's data shape "
                f"{run.vae.data_shape}; evaluate on data like the training data"
            )
        x = x.reshape(len(x), *run.vae.data_shape)
    if limit is not None and limit < len(x):
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        x = x[rows.to(x.device)]
        labels = None if labels is None else labels[rows.to(labels.device)]
        condition = None if condition is None else condition[rows.to(condition.device)]
        index = index[rows.numpy()]
    tag = split if data is None else f"{_safe_name(data)}-{split}"
    return Heldout(x, labels, np.asarray(index), dataset.source, tag, dataset.label_names, condition)


def _safe_name(data: str) -> str:
    """A data set name, or a file's stem, as a file-name part."""
    name = Path(data).name
    for suffix in (".gz", ".npz", ".npy", ".csv", ".tsv", ".h5ad"):
        name = name.removesuffix(suffix)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "data"


@dataclass
class Evaluation:
    """What ``evaluate_run`` found and wrote: ``summary`` (as in the JSON file: log p(x) and
    the ELBO with their standard errors, KL, active units, ...), the files ``json_path``
    and ``npz_path``, and the ``per_example`` estimates."""

    summary: dict
    json_path: Path
    npz_path: Path
    per_example: PerExample


def evaluate_run(path, data=None, split="valid", num_samples=5000, limit=None, seed=0, device="auto",
                 budget=BUDGET, refine: Optional[int] = None) -> Evaluation:
    """Evaluate a run directory; writes RUN/evaluation/<split>.json and <split>.npz (for
    other data, ``<data>-<split>``: the run's own results are never overwritten).

    Under several processes the examples are shared among the ranks in seeded blocks, the
    per-example results gathered, and rank 0 alone writes. Returns (summary, (json path,
    npz path), per-example estimates) on every rank, as an :class:`Evaluation`. With ``refine``
    steps (None: the run's ``model.refine_steps``) the proposal is q(z|x) refined per example
    (:mod:`pyro_vae.infer.refine`): log p(x) estimates the same quantity, the ELBO, KL and
    posterior means are the refined q's."""
    device = resolve_device(device, "$device")
    group = distributed.use_device(device)
    run = load_run(path, device)
    refine = run.spec.model.refine_steps if refine is None else refine
    examples = heldout(run, data, split, limit, seed, device)
    started = time.perf_counter()
    result = importance_sample_sharded(run.vae, examples.x, num_samples, budget, seed, group, examples.condition, refine)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    summary = summarize(result, num_samples, run.vae.layer_dims)
    summary.update(split=split, data=examples.source, seconds=time.perf_counter() - started, device=str(device),
                   seed=seed, processes=group.world_size, limit=limit, units=run.units, refine=refine)
    if result.class_probs is not None and examples.labels is not None:
        summary.update(classification_summary(result.class_probs, examples.labels))
    folder = Path(path) / "evaluation"
    if group.is_main:
        output_folder(folder)
    json_path, npz_path = folder / f"{examples.tag}.json", folder / f"{examples.tag}.npz"
    if not group.is_main:
        return Evaluation(summary, json_path, npz_path, result)
    atomic_write_json(json_path, summary)
    arrays = {
        name: getattr(result, name).cpu().numpy()
        for name in ("log_likelihood", "elbo", "reconstruction", "kl", "posterior_mean", "class_probs")
        if getattr(result, name) is not None
    }
    arrays["index"] = examples.index  # each example's row in the source's array (which ones --limit chose)
    atomic_write(npz_path, lambda f: np.savez(f, **arrays))
    record_outputs(path, [json_path, npz_path])
    return Evaluation(summary, json_path, npz_path, result)
