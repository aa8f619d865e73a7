"""``pyro-vae encode``: a run's latent codes of its own or other data, written to a file.

| ``--out`` | what it holds |
| --- | --- |
| ``FILE.npz`` | arrays ``mean``, ``std`` (n, latent), ``samples`` (n, S, latent) with ``--samples S``, ``q_y`` (n, classes) with a categorical latent, ``layer_dims`` (the sizes of z_1 ... z_L in the latent vector) with stacked layers, ``labels`` and ``label_names`` when the data have them, ``index`` (each example's row in its source array) and ``split`` |
| ``FILE.csv`` | one row per example: index, split, label, mean_0.., std_0.., q_y_0.. (with a categorical latent) |
| ``FILE.h5ad`` | for ``.h5ad`` input: a copy of the input with ``obsm["X_pyro_vae"]`` (means), ``obsm["X_pyro_vae_std"]`` and ``obsm["X_pyro_vae_q_y"]``, with stacked layers also ``obsm["X_pyro_vae_z1"]``, ``obsm["X_pyro_vae_z1_std"]``, ... per layer, with ``--transform batch=b0`` the layer ``layers["pyro_vae_batch=b0"]`` (rows of cells not encoded are NaN); the input is never written |

With ``--transform NAME=VALUE`` (a model with covariates) the ``.npz`` also holds
``transformed``: each example's reconstruction E[x | E_q[z|x, c], c'] decoded with the
covariate set to VALUE (scVI's ``transform_batch``: the batch-corrected data), and
``transform``, the setting.

Every file is written to a temporary name and renamed, so an interrupted encode leaves
nothing half-written.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
import math
from typing import Optional, Sequence

import numpy as np

from ..data import SPLITS
from ..data.covariates import with_values
from ..errors import DataError, RunError
from ..files import atomic_path, atomic_write, atomic_write_text, check_room
from ..infer.encode import encode
from ..infer.train import resolve_device
from ..runs import load_run, read_spec
from .evaluate import heldout, run_dataset
from .memory import check_codes

FORMATS = (".npz", ".csv", ".h5ad")


def encode_run(path, out, data: Optional[str] = None, split: str = "all", samples: int = 0, seed: int = 0,
               device="auto", force: bool = False, transform: Sequence[str] = ()) -> tuple[Path, int]:
    """Encode ``split`` (``all``: train, valid and test, in that order) of the run's data or
    of ``data`` with the run at ``path``; write ``out``. ``transform`` (``NAME=VALUE``
    settings): also each example's reconstruction E[x | E_q[z], c'] with those covariates
    changed (see :func:`~pyro_vae.infer.encode.encode`). Returns (out, examples)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise DataError(f"{{out}} {out}: unknown format; give a file ending in {', '.join(FORMATS)}")
    if samples and out.suffix.lower() == ".csv":
        raise DataError("{samples}: draws are written to .npz (or .h5ad), not to a CSV; choose {out} FILE.npz")
    spec = read_spec(path)
    source = Path(data).resolve() if data is not None and Path(data).exists() else None
    if source is None and data is None and spec.data.path is not None:
        source = Path(spec.data.path).resolve()
    if out.suffix.lower() == ".h5ad":
        if source is None or source.suffix.lower() != ".h5ad":
            raise DataError(f"{{out}} {out}: an .h5ad output annotates an .h5ad input; the data here are not one "
                            "(write .npz or .csv instead)")
    if source is not None and out.resolve() == source:
        raise DataError(f"{{out}} {out}: is the input file; the input is never overwritten, choose another path")
    if out.exists() and not force:
        raise RunError(f"{{out}} {out}: exists; choose another file or pass {{force}} to replace it")
    if transform and out.suffix.lower() == ".csv":
        raise DataError("{transform}: reconstructions are written to .npz (or .h5ad), not to a CSV; choose {out} FILE.npz")
    device = resolve_device(device, "{device}")
    run = load_run(path, device)
    if transform and not run.coding:
        raise DataError("{transform}: changes covariates, and this run's model has none; leave it out")
    changes = run.coding.assignments(list(transform), "{transform}") if transform else {}
    dataset = run_dataset(run, data, device)  # read and prepared once, whatever the splits
    names = [s for s in SPLITS if s in dataset.splits] if split == "all" else [split]
    check_codes(sum(len(dataset.splits[name]) for name in names if name in dataset.splits), samples,
                run.vae.latent_dim)
    parts = []
    for name in names:
        examples = heldout(run, data, name, None, seed, device, dataset=dataset)
        changed = with_values(examples.condition, changes) if changes else None
        parts.append((name, examples, encode(run.vae, examples.x, samples, seed=seed, condition=examples.condition,
                                             transformed=changed)))
    result = {
        "mean": np.concatenate([c["mean"] for _, _, c in parts]),
        "std": np.concatenate([c["std"] for _, _, c in parts]),
        "index": np.concatenate([e.index for _, e, _ in parts]).astype(np.int64),
        "split": np.concatenate([np.full(len(e.index), n) for n, e, _ in parts]),
        "exact": np.array(all(bool(c["exact"]) for _, _, c in parts)),
    }
    if changes:
        check_codes(len(result["index"]), 0, math.prod(run.vae.data_shape))
        result["transform"] = np.array(_transform_name(transform))
    for key in ("samples", "q_y", "transformed"):
        if key in parts[0][2]:
            result[key] = np.concatenate([c[key] for _, _, c in parts])
    if run.vae.layers > 1:  # the latent vector is (z_1, ..., z_L): each layer's size
        result["layer_dims"] = np.array(run.vae.layer_dims)
    if all(e.labels is not None for _, e, _ in parts):
        result["labels"] = np.concatenate([e.labels.cpu().numpy() for _, e, _ in parts])
        if parts[0][1].label_names:
            result["label_names"] = np.array(parts[0][1].label_names)
    writer = {".npz": _write_npz, ".csv": _write_csv, ".h5ad": _write_h5ad}[out.suffix.lower()]
    writer(out, result, source)
    return out, len(result["index"])


def _transform_name(transform: Sequence[str]) -> str:
    """``batch=b0`` (several: ``batch=b0,site=s1``), safe as an HDF5 name."""
    return ",".join("=".join(part.strip() for part in item.split("=", 1)) for item in transform).replace("/", "_")


def _write_npz(out: Path, result: dict, source) -> None:
    atomic_write(out, lambda f: np.savez(f, **result))


def _write_csv(out: Path, result: dict, source) -> None:
    latent = result["mean"].shape[1]
    header = ["index", "split", *(["label"] if "labels" in result else []),
              *(f"mean_{d}" for d in range(latent)), *(f"std_{d}" for d in range(latent)),
              *(f"q_y_{c}" for c in range(result["q_y"].shape[1] if "q_y" in result else 0))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    names = result.get("label_names")
    for i in range(len(result["index"])):
        label = []
        if "labels" in result:
            code = int(result["labels"][i])
            label = [names[code] if names is not None else code]
        writer.writerow([int(result["index"][i]), result["split"][i], *label,
                         *(f"{v:.7g}" for v in result["mean"][i]), *(f"{v:.7g}" for v in result["std"][i]),
                         *(f"{v:.7g}" for v in (result["q_y"][i] if "q_y" in result else ()))])
    atomic_write_text(out, buffer.getvalue())


def _write_h5ad(out: Path, result: dict, source: Path) -> None:
    import anndata.io
    import h5py

    with h5py.File(source, "r") as f:  # the rows: obs's, or X's where the file has no obs (it loads without one)
        if "obs" in f:
            n_obs = len(anndata.io.read_elem(f["obs"]))
        else:
            n_obs = int(f["X"].attrs["shape"][0]) if "shape" in f["X"].attrs else f["X"].shape[0]
    full = {}
    for key, name in (("mean", "X_pyro_vae"), ("std", "X_pyro_vae_std"), ("q_y", "X_pyro_vae_q_y")):
        if key not in result:
            continue
        array = np.full((n_obs, result[key].shape[1]), np.nan, dtype=np.float32)
        array[result["index"]] = result[key]
        full[name] = array
    if "layer_dims" in result:  # one key per stochastic layer too: X_pyro_vae_z1, X_pyro_vae_z1_std, ...
        bounds = np.cumsum([0, *result["layer_dims"]])
        for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            full[f"X_pyro_vae_z{i + 1}"] = full["X_pyro_vae"][:, start:stop]
            full[f"X_pyro_vae_z{i + 1}_std"] = full["X_pyro_vae_std"][:, start:stop]
    layers = {}
    if "transformed" in result:  # a layer of the cells' shape: the reconstruction under the changed covariates
        array = np.full((n_obs, *result["transformed"].shape[1:]), np.nan, dtype=np.float32)
        array[result["index"]] = result["transformed"]
        layers[f"pyro_vae_{result['transform']}"] = array.reshape(n_obs, -1)
    if "samples" in result:
        array = np.full((n_obs, *result["samples"].shape[1:]), np.nan, dtype=np.float32)
        array[result["index"]] = result["samples"]
        full["X_pyro_vae_samples"] = array
    # HDF5 cannot fail cleanly half way: a file the size limit or the disk would cut short is refused first
    check_room(out, source.stat().st_size + sum(a.nbytes for a in [*full.values(), *layers.values()]) + 2**20)
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            obsm = f.require_group("obsm")
            for name, array in full.items():
                if name in obsm:
                    del obsm[name]
                anndata.io.write_elem(obsm, name, array)
            group = f.require_group("layers") if layers else None
            for name, array in layers.items():
                if name in group:
                    del group[name]
                anndata.io.write_elem(group, name, array)
