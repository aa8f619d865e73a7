"""``pyro-vae encode``: a run's latent codes of its own or other data, written to a file.

| ``--out`` | what it holds |
| --- | --- |
| ``FILE.npz`` | arrays ``mean``, ``std`` (n, latent), ``samples`` (n, S, latent) with ``--samples S``, ``q_y`` (n, classes) with a categorical latent, ``layer_dims`` (the sizes of z_1 ... z_L in the latent vector) with stacked layers, ``labels`` and ``label_names`` when the data have them, ``index`` (each example's row in its source array) and ``split``; and the means in the layout ``pyro-vae train --data`` reads (``train``, ``valid``, ``test``, ``<split>_labels``: see below) |
| ``FILE.csv`` | one row per example: index, split, label, mean_0.., std_0.., q_y_0.. (with a categorical latent) |
| ``FILE.h5ad`` | for ``.h5ad`` input: a copy of the input with ``obsm["X_pyro_vae"]`` (means), ``obsm["X_pyro_vae_std"]`` and ``obsm["X_pyro_vae_q_y"]``, ``obsm["X_pyro_vae_samples"]`` (n_obs, S, latent) with ``--samples S``, with stacked layers also ``obsm["X_pyro_vae_z1"]``, ``obsm["X_pyro_vae_z1_std"]``, ... per layer, with ``--transform batch=b0`` the layer ``layers["pyro_vae_batch=b0"]`` (rows of cells not encoded are NaN); the input is never written |

With ``--transform NAME=VALUE`` (a model with covariates) the ``.npz`` also holds
``transformed``: each example's reconstruction E[x | E_q[z|x, c], c'] decoded with the
covariate set to VALUE (scVI's ``transform_batch``: the batch-corrected data), and
``transform``, the setting.

The ``.npz`` is also a data file: the arrays ``train``, ``valid`` and ``test`` hold each
split's means E_q[z|x] in the order of the split's rows in its source, and ``<split>_labels``
their labels (with stacked layers the vector (z_1, ..., z_L)), so ``pyro-vae train --data
FILE.npz`` fits a second model to the codes of every split encoded (``train`` needs the
training split's). This is Kingma et al.'s (2014) M1+M2: M2 (the shipped ``m2_on_codes``)
fitted to the latent features of a VAE (M1), where a Gaussian p(z_1 | y, z_2) on the codes separates the classes far better than
M2 on the pixels (REPRODUCTION.md, row 5).

Every file is written to a temporary name and renamed, so an interrupted encode leaves
nothing half-written. The S draws of each example go to the file pass by pass (as many
examples per encoder pass as memory allows), so their number is bounded by the disk,
which is checked before any work, not by memory.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data import SPLITS
from ..data.checks import corrupt
from ..data.covariates import with_values
from ..errors import DataError, RunError
from ..files import NpzWriter, atomic_path, check_room
from ..infer.encode import encode_chunks
from ..devices import resolve_device
from ..runs import load_run, read_spec
from .evaluate import heldout, run_dataset
from .memory import FLOAT, codes_chunk, refuse_beyond

FORMATS = (".npz", ".csv", ".h5ad")


@dataclass
class Encoded:
    """What ``encode_run`` wrote: the file ``path`` and the number of ``examples`` in it."""

    path: Path
    examples: int


def encode_run(path, out, data: Optional[str] = None, split: str = "all", samples: int = 0, seed: int = 0,
               device="auto", force: bool = False, transform: Sequence[str] = ()) -> Encoded:
    """Encode ``split`` (``all``: train, valid and test, in that order) of the run's data or
    of ``data`` with the run at ``path``; write ``out``. ``transform`` (``NAME=VALUE``
    settings): also each example's reconstruction E[x | E_q[z], c'] with those covariates
    changed (see :func:`~pyro_vae.infer.encode.encode`)."""
    out = Path(out)
    source = _checked_output(out, read_spec(path), data, samples, force, transform)
    device = resolve_device(device, "$device")
    run = load_run(path, device)
    if transform and not run.coding:
        raise DataError("$transform: changes covariates, and this run's model has none; leave it out")
    changes = run.coding.assignments(list(transform), "$transform") if transform else {}
    dataset = run_dataset(run, data, device)  # read and prepared once, whatever the splits
    names = [s for s in SPLITS if s in dataset.splits] if split == "all" else [split]
    total, latent = sum(len(dataset.splits[name]) for name in names if name in dataset.splits), run.vae.latent_dim
    chunk = codes_chunk(total, samples, latent)
    if samples:  # the draws stream to the file: the disk, not memory, must hold them
        check_room(out, FLOAT * total * samples * latent, "$samples")
    if changes:  # the reconstructions are held, one data row per example
        refuse_beyond(FLOAT * 2 * total * math.prod(run.vae.data_shape), f"the reconstructions of {total} examples",
                      "$transform")
    writer = {".npz": _NpzCodes, ".csv": _CsvCodes, ".h5ad": _H5adCodes}[out.suffix.lower()]
    with atomic_path(out) as tmp:
        sink = writer(tmp, source, run, total, samples)
        try:
            parts = [_encode_split(run, data, name, seed, device, dataset, chunk, samples, changes, sink)
                     for name in names]
            result = _codes(run, parts, changes and _transform_name(transform))
            sink.finish(result)
        finally:
            sink.close()
    return Encoded(out, len(result["index"]))


def _checked_output(out: Path, spec, data: Optional[str], samples: int, force: bool, transform: Sequence[str]):
    """The input file (where the data are one), after refusing an output that cannot hold
    what is asked, that would overwrite the input, or that exists (without ``force``)."""
    if out.suffix.lower() not in FORMATS:
        raise DataError(f"$out {out}: unknown format; give a file ending in {', '.join(FORMATS)}")
    if samples and out.suffix.lower() == ".csv":
        raise DataError("$samples: draws are written to .npz (or .h5ad), not to a CSV; choose $out FILE.npz")
    source = Path(data).resolve() if data is not None and Path(data).exists() else None
    if source is None and data is None and spec.data.path is not None:
        source = Path(spec.data.path).resolve()
    if out.suffix.lower() == ".h5ad":
        if source is None or source.suffix.lower() != ".h5ad":
            raise DataError(f"$out {out}: an .h5ad output annotates an .h5ad input; the data here are not one "
                            "(write .npz or .csv instead)")
    if source is not None and out.resolve() == source:
        raise DataError(f"$out {out}: is the input file; the input is never overwritten, choose another path")
    if (out.exists() or out.is_symlink()) and not force:  # a link is replaced, never written through
        raise RunError(f"$out {out}: exists; choose another file or pass $force to replace it")
    if transform and out.suffix.lower() == ".csv":
        raise DataError("$transform: reconstructions are written to .npz (or .h5ad), not to a CSV; choose $out FILE.npz")
    return source


def _encode_split(run, data, name: str, seed: int, device, dataset, chunk: int, samples: int, changes: dict, sink):
    """(split, its examples, their codes chunk by chunk); the draws go to ``sink`` as made."""
    examples = heldout(run, data, name, None, seed, device, dataset=dataset)
    chunks, done = [], 0
    changed = with_values(examples.condition, changes) if changes else None
    for part in encode_chunks(run.vae, examples.x, samples, seed=seed, chunk=chunk,
                              condition=examples.condition, transformed=changed):
        draws = part.pop("samples", None)
        if draws is not None:
            sink.draws(examples.index[done : done + len(draws)], draws)
        done += len(part["mean"])
        chunks.append(part)
    return name, examples, chunks


def _codes(run, parts: list, transform_name) -> dict:
    """The arrays the output holds (see the module's table), from each split's codes;
    ``transform_name``, the covariates' setting where reconstructions were asked for."""
    result = {
        "mean": np.concatenate([c["mean"] for _, _, cs in parts for c in cs]),
        "std": np.concatenate([c["std"] for _, _, cs in parts for c in cs]),
        "index": np.concatenate([e.index for _, e, _ in parts]).astype(np.int64),
        "split": np.concatenate([np.full(len(e.index), n) for n, e, _ in parts]),
        "exact": np.array(all(bool(c["exact"]) for _, _, cs in parts for c in cs)),
    }
    for key in ("q_y", "transformed"):
        if key in parts[0][2][0]:
            result[key] = np.concatenate([c[key] for _, _, cs in parts for c in cs])
    if transform_name:
        result["transform"] = np.array(transform_name)
    if run.vae.layers > 1:  # the latent vector is (z_1, ..., z_L): each layer's size
        result["layer_dims"] = np.array(run.vae.layer_dims)
    if all(e.labels is not None for _, e, _ in parts):
        result["labels"] = np.concatenate([e.labels.cpu().numpy() for _, e, _ in parts])
        if parts[0][1].label_names:
            result["label_names"] = np.array(parts[0][1].label_names)
    return result


def as_data(result: dict) -> dict:
    """The means of each split, rows in their source order, with their labels (names where
    the data named them): the arrays of an .npz data file (``pyro_vae.data.readers``)."""
    arrays = {}
    for split in SPLITS:
        rows = np.flatnonzero(result["split"] == split)
        if not len(rows):
            continue
        rows = rows[np.argsort(result["index"][rows], kind="stable")]
        arrays[split] = result["mean"][rows]
        if "labels" in result:
            labels = result["labels"][rows]
            arrays[f"{split}_labels"] = result["label_names"][labels] if "label_names" in result else labels
    return arrays


def _transform_name(transform: Sequence[str]) -> str:
    """``batch=b0`` (several: ``batch=b0,site=s1``), safe as an HDF5 name."""
    return ",".join("=".join(part.strip() for part in item.split("=", 1)) for item in transform).replace("/", "_")


class _NpzCodes:
    """The codes as arrays of an .npz; the draws, (n, S, latent), written pass by pass."""

    def __init__(self, tmp: Path, source, run, total: int, samples: int):
        self.npz = NpzWriter(tmp)
        self.write = self.npz.rows("samples", (total, samples, run.vae.latent_dim)) if samples else None

    def draws(self, index, array) -> None:
        self.write(array)

    def finish(self, result: dict) -> None:
        assert self.npz.entry is None, "every example's draws are written before the codes"
        for key, value in {**result, **as_data(result)}.items():
            self.npz.add(key, value)

    def close(self) -> None:
        self.npz.close()


class _CsvCodes:
    """One row per example (draws are refused for a CSV before any work)."""

    def __init__(self, tmp: Path, source, run, total: int, samples: int):
        self.tmp = tmp

    def finish(self, result: dict) -> None:
        _write_csv(self.tmp, result)

    def close(self) -> None:
        pass


def _write_csv(out: Path, result: dict) -> None:
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
    out.write_text(buffer.getvalue(), encoding="utf-8")


class _H5adCodes:
    """A copy of the input .h5ad with the codes in obsm; the draws, (n_obs, S, latent), written
    pass by pass at their cells' rows (rows of cells not encoded are NaN)."""

    def __init__(self, tmp: Path, source: Path, run, total: int, samples: int):
        import anndata.io
        import h5py

        with h5py.File(source, "r") as f:  # the rows: obs's, or X's where the file has no obs (it loads without one)
            try:
                if "obs" in f:
                    self.n_obs = len(anndata.io.read_elem(f["obs"]))
                else:
                    self.n_obs = int(f["X"].attrs["shape"][0]) if "shape" in f["X"].attrs else f["X"].shape[0]
            except Exception as exc:  # anndata raises what h5py, pandas or its own registry raise
                raise corrupt(f"{source}: obs (the cells, whose rows the codes fill)", exc) from None
            if "obsm" in f and not isinstance(f["obsm"], h5py.Group):
                raise DataError(f"{source}: obsm is not a group of arrays; the file is corrupt (write it with anndata)")
        if total > self.n_obs:
            raise DataError(f"{source}: obs has {self.n_obs} rows but the matrix {total} or more; the file is corrupt")
        latent = run.vae.latent_dim
        # HDF5 cannot fail cleanly half way: a file the size limit or the disk would cut short is refused first
        check_room(tmp, source.stat().st_size + FLOAT * self.n_obs * (4 * latent + run.vae.classes + samples * latent)
                   + 2**20, "$samples" if samples else "")
        shutil.copyfile(source, tmp)
        self.file = h5py.File(tmp, "r+")
        self.obsm = self.file.require_group("obsm")
        if samples:
            if "X_pyro_vae_samples" in self.obsm:
                del self.obsm["X_pyro_vae_samples"]
            self.samples = self.obsm.create_dataset("X_pyro_vae_samples", (self.n_obs, samples, latent), "float32",
                                                    fillvalue=np.nan)
            self.samples.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})  # as anndata writes

    def _check_rows(self, index) -> None:
        if len(index) and index.max() >= self.n_obs:
            raise DataError(f"obs has {self.n_obs} rows, fewer than the matrix; the input .h5ad is corrupt")

    def draws(self, index, array) -> None:
        self._check_rows(index)
        order = np.argsort(index)
        rows, array = index[order], array[order]
        if rows[-1] - rows[0] == len(rows) - 1:  # consecutive rows: one slab
            self.samples[rows[0] : rows[-1] + 1] = array
        else:
            self.samples[rows] = array

    def finish(self, result: dict) -> None:
        import anndata.io

        self._check_rows(result["index"])
        full = {}
        for key, name in (("mean", "X_pyro_vae"), ("std", "X_pyro_vae_std"), ("q_y", "X_pyro_vae_q_y")):
            if key not in result:
                continue
            array = np.full((self.n_obs, result[key].shape[1]), np.nan, dtype=np.float32)
            array[result["index"]] = result[key]
            full[name] = array
        if "layer_dims" in result:  # one key per stochastic layer too: X_pyro_vae_z1, X_pyro_vae_z1_std, ...
            bounds = np.cumsum([0, *result["layer_dims"]])
            for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
                full[f"X_pyro_vae_z{i + 1}"] = full["X_pyro_vae"][:, start:stop]
                full[f"X_pyro_vae_z{i + 1}_std"] = full["X_pyro_vae_std"][:, start:stop]
        for name, array in full.items():
            if name in self.obsm:
                del self.obsm[name]
            anndata.io.write_elem(self.obsm, name, array)
        if "transformed" in result:  # a layer of the cells' shape: the reconstruction under the changed covariates
            array = np.full((self.n_obs, *result["transformed"].shape[1:]), np.nan, dtype=np.float32)
            array[result["index"]] = result["transformed"]
            group, name = self.file.require_group("layers"), f"pyro_vae_{result['transform']}"
            if name in group:
                del group[name]
            anndata.io.write_elem(group, name, array.reshape(self.n_obs, -1))

    def close(self) -> None:
        self.file.close()
