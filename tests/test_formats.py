"""The data users bring: .npy, CSV, AnnData; streaming from disk against
holding in memory; standardization; log1p encoder input and library sizes; Run.prepare,
encode, and the one-line refusals of bad input."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from helpers import MNIST_IDX, assert_one_line_error, needs_idx, run_cli, write_npz
from pyro_vae.data import load_data, read_source
from pyro_vae.errors import DataError, SpecError
from pyro_vae.workflows.train import train
from pyro_vae.model import build_vae
from pyro_vae.runs import load_run, read_spec
from pyro_vae.spec import DataSpec, Spec

anndata = pytest.importorskip("anndata", reason="the anndata extra (in dev) is needed for .h5ad")


def small_spec(path, likelihood="gaussian", epochs=2, batch=16, **data):
    return Spec.from_dict({
        "model": {"latent_dim": 3, "likelihood": {"kind": likelihood},
                  "encoder": {"kind": "mlp", "hidden": [16]}, "decoder": {"kind": "mlp", "hidden": [16]}},
        "inference": {"schedule": {"epochs": epochs, "batch_size": batch, "device": "cpu", "checkpoint_every": 0}},
        "data": {"path": str(path), **data},
    })


def history(trainer):
    return [{k: v for k, v in row.items() if k not in ("seconds", "examples_per_second")} for row in trainer.state.history]


def write_h5ad(path, n=120, genes=12, seed=0):
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(2.0, 2.0, (n, genes))).astype(np.float32)
    obs = pd.DataFrame({"cell_type": np.array(["B", "T", "NK"])[np.arange(n) % 3],
                        "part": np.array(["train"] * (n - 30) + ["valid"] * 20 + ["test"] * 10)},
                       index=[f"cell{i}" for i in range(n)])
    adata = anndata.AnnData(X=sp.csr_matrix(np.log1p(counts)), obs=obs)
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.write_h5ad(path)
    return counts


# --- formats ---------------------------------------------------------------------------------


def test_npy_rows_are_read_from_disk_in_any_order(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (50, 3, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    raw = read_source(None, str(tmp_path / "a.npy"))
    rows = raw.splits["train"]
    assert type(rows).__name__ == "NpyRows" and rows.shape == (50, 3, 4)
    index = np.array([7, 3, 3, 49, 0, 8, 9, 10])  # unordered, repeated, runs
    assert np.array_equal(rows.read(index), array[index])
    assert raw.max_level == 255
    fortran = np.asfortranarray(np.arange(24.0).reshape(6, 4))
    np.save(tmp_path / "f.npy", fortran)
    assert np.array_equal(read_source(None, str(tmp_path / "f.npy")).splits["train"].read([5, 1]), fortran[[5, 1]])


def test_csv_with_header_and_string_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,kind,c\n1,2.5,cat,3\n4,5,dog,6\n7,8,cat,9\n")
    raw = read_source(None, str(path), DataSpec(path=str(path), labels="kind"))
    assert np.array_equal(raw.splits["train"].array, np.array([[1, 2.5, 3], [4, 5, 6], [7, 8, 9]], np.float32))
    assert raw.labels["train"].tolist() == [0, 1, 0] and raw.label_names == ["cat", "dog"]
    import hashlib
    assert raw.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    tsv = tmp_path / "t.tsv"
    tsv.write_text("1\t2\n3\t4\n")  # no header: every row is data; integers stay integers (counts)
    raw = read_source(None, str(tsv))
    assert raw.splits["train"].array.tolist() == [[1, 2], [3, 4]] and raw.splits["train"].dtype == np.int64


def test_h5ad_sparse_layer_labels_and_split_column(tmp_path):
    counts = write_h5ad(tmp_path / "cells.h5ad")
    spec = DataSpec(path=str(tmp_path / "cells.h5ad"), layer="counts", labels="cell_type", split_column="part")
    raw = read_source(spec.name, spec.path, spec)
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 90, "valid": 20, "test": 10}
    assert raw.splits["train"].sparse
    assert np.array_equal(raw.splits["valid"].read(np.arange(20)), counts[90:110])
    assert raw.label_names == ["B", "NK", "T"] and raw.labels["test"].tolist() == [[0, 2, 1][i % 3] for i in range(110, 120)]
    x_spec = DataSpec(path=str(tmp_path / "cells.h5ad"))  # X (log1p values), splits drawn
    data = load_data(x_spec, seed=0)
    assert set(data.splits) == {"train", "valid", "test"}
    rows = data.origin["valid"]
    assert torch.allclose(data.split("valid"), torch.as_tensor(np.log1p(counts[rows])))


@pytest.mark.parametrize("content, fragments", [
    ("1,2\n3\n", ["ragged table", "line 2 has 1 fields"]),
    ("a,b\n1,x\n", ["column 'b' holds 'x' on line 2, not a number"]),
    ("1,nan\n2,3\n", ["NaN or infinite"]),
    ("1,inf\n2,3\n", ["NaN or infinite"]),
])
def test_bad_tables_are_refused(tmp_path, content, fragments):
    path = tmp_path / "bad.csv"
    path.write_text(content * 10 if "nan" in content or "inf" in content else content)
    with pytest.raises(DataError) as info:
        train(small_spec(path))
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.integration
def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, monkeypatch):
    write_h5ad(tmp_path / "cells.h5ad")
    np.save(tmp_path / "neg.npy", -np.ones((30, 4), dtype=np.int64))
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]] * 3, dtype=object), allow_pickle=True)
    cases = [
        (["--data", tmp_path / "cells.h5ad", "--set", "data.layer=spliced"], ["no layer 'spliced' (layers: counts)"]),
        (["--data", tmp_path / "cells.h5ad", "--set", "data.labels=batch"], ["no obs column 'batch'", "cell_type"]),
        (["--data", tmp_path / "neg.npy", "--model", "count_nb"], ["non-negative integer counts"]),
        (["--data", tmp_path / "obj.npy"], ["object dtype", "refused"]),
    ]
    for args, fragments in cases:
        out = tmp_path / "run"
        code, _, err = run_cli("train", *args, "--out", out, "--quiet")
        assert_one_line_error(code, err, *fragments)
        assert not out.exists()


def test_h5ad_without_the_extra_names_the_install(tmp_path, monkeypatch):
    write_h5ad(tmp_path / "cells.h5ad")
    monkeypatch.setitem(sys.modules, "anndata.io", None)
    with pytest.raises(DataError, match=r'needs anndata: pip install "pyro-vae\[anndata\]"'):
        read_source(None, str(tmp_path / "cells.h5ad"))


def test_densifying_more_than_memory_is_refused(tmp_path, monkeypatch):
    write_h5ad(tmp_path / "cells.h5ad")
    monkeypatch.setattr("pyro_vae.data.preparation.available_memory", lambda: 1000)
    with pytest.raises(DataError, match=r'needs 0.0 GiB, more than the 0.0 GiB available; set data.in_memory = "auto"'):
        load_data(DataSpec(path=str(tmp_path / "cells.h5ad"), in_memory=True), seed=0)
    data = load_data(DataSpec(path=str(tmp_path / "cells.h5ad")), seed=0)  # auto: over the budget, so streamed
    assert data.streamed


# --- streaming: the same numbers as in memory ------------------------------------------------


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_streamed_training_is_bit_identical_to_in_memory(tmp_path, binarize):
    array = np.random.default_rng(0).random((200, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    likelihood = "gaussian" if binarize == "none" else "bernoulli"
    runs = {}
    for in_memory in (True, False):
        trainer = train(small_spec(tmp_path / "x.npy", likelihood, binarize=binarize, in_memory=in_memory))
        assert trainer.data.streamed == (not in_memory)
        runs[in_memory] = trainer
    assert history(runs[True]) == history(runs[False])
    for key, value in runs[True].vae.state_dict().items():
        assert torch.equal(value, runs[False].vae.state_dict()[key]), key


@pytest.mark.integration
def test_streamed_resume_and_evaluation_match(tmp_path):
    from pyro_vae.errors import Interrupted
    from pyro_vae.workflows.evaluate import evaluate_run
    from pyro_vae.workflows.train import resume

    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((160, 5)).astype(np.float32))
    spec = small_spec(tmp_path / "x.npy", epochs=2, in_memory=False)
    whole = train(spec, tmp_path / "whole")
    # interrupted inside the first epoch, resumed from its checkpoint
    calls = []

    def stop_after_three(trainer):
        original = trainer._step  # eager or compiled

        def step(*args):
            calls.append(1)
            if len(calls) == 3:
                raise Interrupted(15, 1, 2)
            return original(*args)
        trainer._step = step
        trainer.schedule.checkpoint_every = 1

    with pytest.raises(Interrupted):
        train(spec, tmp_path / "cut", before=stop_after_three)
    resumed = resume(tmp_path / "cut")
    assert history(resumed) == history(whole)
    memory = small_spec(tmp_path / "x.npy", epochs=2, in_memory=True)
    train(memory, tmp_path / "memory")
    a = evaluate_run(tmp_path / "whole", num_samples=20).summary
    b = evaluate_run(tmp_path / "memory", num_samples=20).summary
    assert a["log_likelihood"] == b["log_likelihood"] and a["kl"] == b["kl"]


def test_prefetcher_stops_and_passes_errors_on():
    from pyro_vae.data.dataset import Prefetcher

    with Prefetcher(lambda i: i * 2, range(100), depth=2) as results:
        assert [next(results) for _ in range(3)] == [0, 2, 4]
    # leaving early stopped the thread

    def broken(i):
        if i == 2:
            raise OSError("disk gone")
        return i

    with pytest.raises(OSError, match="disk gone"):
        with Prefetcher(broken, range(5)) as results:
            list(results)


@pytest.mark.integration
@pytest.mark.slow
def test_a_1gb_npy_trains_within_400mb_of_rss(tmp_path):
    """Streaming holds a batch, not the file: peak RSS is measured (getrusage) after the
    imports and the model, and again after a few hundred steps on a 1 GB .npy."""
    rows = 2**18  # x 1024 float32 = 1 GiB
    path = tmp_path / "big.npy"
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 1024))
    for start in range(0, rows, 2**15):
        mapped[start : start + 2**15] = np.random.default_rng(start).random((2**15, 1024), dtype=np.float32)
    mapped.flush()
    del mapped
    script = textwrap.dedent(f"""
        import resource, torch, numpy as np
        from pyro_vae.workflows.train import train
        from pyro_vae.spec import Spec
        spec = Spec.from_dict({{"model": {{"latent_dim": 8, "likelihood": {{"kind": "gaussian"}},
            "encoder": {{"kind": "mlp", "hidden": [64]}}, "decoder": {{"kind": "mlp", "hidden": [64]}}}},
            "inference": {{"schedule": {{"epochs": 1, "batch_size": 128, "device": "cpu"}}}},
            "data": {{"path": {str(path)!r}, "in_memory": False, "valid_fraction": 0.002, "test_fraction": 0.002}}}})
        import sys
        t = sys.modules["pyro_vae.infer.train"]
        t.Trainer.steps_per_epoch = property(lambda self: 300, lambda self, v: None)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        trainer = train(spec)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(trainer.data.streamed, trainer.state.global_step, (peak - base) / 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    streamed, steps, grown_mb = result.stdout.split()
    assert streamed == "True" and int(steps) == 300
    print(f"streamed 300 steps of a 1 GiB .npy: peak RSS grew {float(grown_mb):.0f} MB")
    assert float(grown_mb) < 400, grown_mb


# --- preparation decided by the likelihood and the data ----------------------------------------


def test_standardize_uses_the_training_split_and_is_stored(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.normal(5, 3, (300, 4)) * [1, 2, 3, 4]).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    trainer = train(small_spec(tmp_path / "x.npy", standardize="per_feature", epochs=1), tmp_path / "run")
    data = trainer.data
    train_rows = array[data.origin["train"]].astype(np.float64)
    assert np.allclose(data.preprocessing.mean.numpy(), train_rows.mean(0), rtol=1e-5)
    assert np.allclose(data.preprocessing.sd.numpy(), train_rows.std(0), rtol=1e-4)
    x = data.split("train")
    assert torch.allclose(x.double().mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.double().std(0, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-4)
    run = load_run(tmp_path / "run")  # the run keeps them, and prepares new data with them
    assert torch.allclose(run.prepare(array[:5]), torch.as_tensor((array[:5] - train_rows.mean(0)) / train_rows.std(0)).float(), atol=1e-5)
    single = train(small_spec(tmp_path / "x.npy", standardize=True, epochs=1)).data.preprocessing
    assert single.mean.shape == () and np.isclose(single.mean.item(), train_rows.mean(), rtol=1e-5)


def test_learned_gaussian_scales_start_from_the_data_spread(tmp_path):
    from pyro_vae.workflows.train import prepare_training

    array = (np.random.default_rng(0).normal(0, 1, (400, 3)) * [0.5, 3.0, 0.0]).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    vae, data = prepare_training(small_spec(tmp_path / "x.npy", standardize=False))  # the data's own spread (auto would make it 1)
    _, scale = vae.likelihood.loc_scale(torch.zeros(1, 1, 3))
    sd = array[data.origin["train"]].std(0)
    assert np.allclose(scale.detach().numpy()[:2], sd[:2], rtol=1e-4)
    assert scale[2].item() == pytest.approx(0.05 * np.sqrt((sd**2).mean()), rel=1e-4)  # a constant feature: floored
    fixed = Spec.from_dict({"model": {"likelihood": {"kind": "gaussian", "scale": "fixed"}}}).model
    fixed_vae, _ = build_vae(fixed, (3,)), None
    assert fixed_vae.likelihood.loc_scale(torch.zeros(1, 1, 3))[1].item() == pytest.approx(0.1)


def test_log1p_encoder_input_and_library_size():
    spec = Spec.from_dict({"model": {"latent_dim": 2, "likelihood": {"kind": "zinb", "library_size": True},
                                     "encoder_input": "log1p"}}).model
    vae = build_vae(spec, (5,))
    x = torch.tensor([[0.0, 3, 10, 1, 0], [2, 2, 2, 2, 2]])
    assert torch.equal(vae.encoder_input(x), torch.log1p(x))
    z = torch.randn(7, 2, 2)
    out = vae.decoder(z)
    mu, _ = vae.likelihood.mean_theta(vae.likelihood.split(out)[0], x.sum(-1))
    assert torch.allclose(mu.sum(-1), x.sum(-1).expand(7, 2), rtol=1e-5)  # l * softmax sums to the library size
    from pyro_vae.data.statistics import DataStatistics
    vae.likelihood.initialize_from_data(DataStatistics.of([x]))
    prior_mu, _ = vae.likelihood.mean_theta(vae.likelihood.split(vae.decoder(z))[0])
    assert torch.allclose(prior_mu.sum(-1), torch.full((7, 2), 12.0), rtol=1e-5)  # the mean total of x
    gaussian = Spec.from_dict({"model": {"likelihood": {"kind": "gaussian"}, "encoder_input": "log1p"}}).model
    with pytest.raises(SpecError, match="log1p.*non-negative data"):
        build_vae(gaussian, (5,))


@pytest.mark.integration
@needs_idx
def test_every_likelihood_takes_mnist_idx_with_one_set_line(capsys):
    from pyro_vae.cli import main
    from pyro_vae.model.likelihoods import LIKELIHOODS

    for kind in LIKELIHOODS.names():
        if kind == "beta":  # needs values strictly inside (0, 1): MNIST has exact 0 and 1
            continue
        code = main(["train", "--check", "--data", str(MNIST_IDX), "--set", f"model.likelihood.kind={kind}"])
        assert code == 0, (kind, capsys.readouterr().err)


# --- the run on new data: prepare, evaluate, encode -------------------------------------------


@pytest.mark.integration
def test_prepare_takes_numpy_levels_and_refuses_rescaled_input(digits_run):
    from sklearn.datasets import load_digits

    run = load_run(digits_run)
    levels = load_digits().data[:4]  # 0..16, as stored
    x = run.prepare(levels)
    # the default binomial scores the levels as stored
    assert x.dtype == torch.float32 and torch.equal(x, torch.as_tensor(levels, dtype=torch.float32))
    assert run.vae.q(x).mean.shape == (4, run.vae.latent_dim)
    with pytest.raises(DataError, match="far outside the training data's"):
        run.prepare(levels * 16)  # 0..255 given to a run of 0..16
    with pytest.raises(DataError, match="does not hold examples of shape"):
        run.prepare(np.zeros((3, 7)))
    with pytest.raises(DataError, match="does not hold numbers"):
        run.prepare(np.array([["a"] * 64]))


@pytest.mark.integration
def test_evaluating_other_data_keeps_the_runs_results(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    from pyro_vae.workflows.evaluate import evaluate_run

    own = evaluate_run(digits_run, num_samples=10, limit=30, seed=3)
    own_json, own_npz = own.json_path, own.npz_path
    path = write_npz(tmp_path / "other.npz", train=load_digits().data[:200].astype(np.uint8))
    other = evaluate_run(digits_run, data=str(path), num_samples=10, limit=15)
    json_path, npz_path = other.json_path, other.npz_path
    assert json_path.name == "other-valid.json" and own_json.name == "valid.json" and own_json.exists()
    per_example = np.load(own_npz)
    index = per_example["index"]
    assert len(index) == 30 and len(set(index.tolist())) == 30 and index.max() < 1797  # rows of the digits file
    chosen = np.load(npz_path)["index"]
    assert len(chosen) == 15 and chosen.max() < 200 and not np.array_equal(chosen, np.arange(15))


@pytest.mark.integration
def test_encode_round_trips(digits_run, tmp_path):
    from pyro_vae.workflows.evaluate import heldout

    run = load_run(digits_run)
    code, out, err = run_cli("encode", digits_run, "--out", tmp_path / "codes.npz", "--samples", "3")
    assert code == 0, err
    codes = np.load(tmp_path / "codes.npz")
    assert codes["mean"].shape == (1797, run.vae.latent_dim) and codes["samples"].shape == (1797, 3, run.vae.latent_dim)
    assert sorted(codes["index"][codes["split"] == "valid"].tolist()) == sorted(heldout(run, split="valid").index.tolist())
    from sklearn.datasets import load_digits
    levels = load_digits().data[codes["index"]]
    q = run.vae.q(run.prepare(levels))
    assert np.allclose(codes["mean"], q.mean.detach().numpy(), atol=1e-5)
    assert np.allclose(codes["std"], q.stddev.detach().numpy(), atol=1e-5)
    assert np.array_equal(codes["labels"], load_digits().target[codes["index"]])
    code, _, err = run_cli("encode", digits_run, "--split", "test", "--out", tmp_path / "codes.csv")
    assert code == 0, err
    lines = (tmp_path / "codes.csv").read_text().splitlines()
    assert lines[0].startswith("index,split,label,mean_0") and len(lines) == 1 + len(heldout(run, split="test").index)
    code, _, err = run_cli("encode", digits_run, "--out", tmp_path / "codes.npz")
    assert_one_line_error(code, err, "exists", "--force")


def test_the_codes_data_layout_orders_rows_and_keeps_names_a_split_lacks(tmp_path):
    """encode's data arrays: each split's means in source-row order whatever order they were
    encoded in; string labels written as names, read back as one coding over the splits even
    where a split lacks a class; a file with a single split reads as that split alone."""
    from pyro_vae.data.readers import read_npz
    from pyro_vae.workflows.encode import as_data

    result = {"mean": np.arange(12, dtype=np.float32).reshape(6, 2),
              "index": np.array([5, 2, 9, 1, 0, 3]),
              "split": np.array(["train", "train", "train", "valid", "test", "test"]),
              "labels": np.array([2, 0, 1, 0, 0, 0]), "label_names": np.array(["a", "b", "rare"])}
    arrays = as_data(result)
    assert np.array_equal(arrays["train"], result["mean"][[1, 0, 2]])  # rows 2, 5, 9
    assert arrays["train_labels"].tolist() == ["a", "rare", "b"] and arrays["test_labels"].tolist() == ["a", "a"]
    assert np.array_equal(arrays["test"], result["mean"][[4, 5]])
    np.savez(tmp_path / "codes.npz", **arrays)
    data = read_npz(tmp_path / "codes.npz")
    assert data.label_names == ["a", "b", "rare"]
    assert data.labels["train"].tolist() == [0, 2, 1] and data.labels["valid"].tolist() == [0]
    only_test = as_data({**result, "split": np.full(6, "test")})
    assert sorted(only_test) == ["test", "test_labels"] and np.array_equal(only_test["test"], result["mean"][[4, 3, 1, 5, 0, 2]])


def test_npz_labels_mixing_names_and_numbers_are_refused(tmp_path):
    from pyro_vae.data.readers import read_npz

    path = write_npz(tmp_path / "mixed.npz", train=np.zeros((2, 3)), train_labels=np.array(["a", "b"]),
                     valid=np.zeros((1, 3)), valid_labels=np.array([1]))
    with pytest.raises(DataError, match="names and others numbers"):
        read_npz(path)


@pytest.mark.integration
def test_encoded_codes_are_a_data_file_a_second_model_trains_on(digits_run, tmp_path):
    """M1+M2 (Kingma et al., 2014): the .npz holds each split's means in its source order with
    their labels, and ``train --data`` fits M2 to them."""
    from pyro_vae.data.readers import read_npz

    code, _, err = run_cli("encode", digits_run, "--out", tmp_path / "codes.npz")
    assert code == 0, err
    codes = np.load(tmp_path / "codes.npz")
    data = read_npz(tmp_path / "codes.npz")
    from sklearn.datasets import load_digits
    target = load_digits().target
    for split in ("train", "valid", "test"):
        rows = np.flatnonzero(codes["split"] == split)
        order = rows[np.argsort(codes["index"][rows])]
        assert np.array_equal(codes[split], codes["mean"][order])
        assert np.array_equal(codes[f"{split}_labels"], target[np.sort(codes["index"][rows])])
        assert np.array_equal(data.labels[split], target[np.sort(codes["index"][rows])])
    code, out, err = run_cli("train", "--model", "m2_semisupervised", "--data", tmp_path / "codes.npz",
                             "--set", "data.labelled=20", "--set", "inference.schedule.epochs=1",
                             "--set", "inference.schedule.batch_size=64", "--out", tmp_path / "m2")
    assert code == 0, err
    assert read_spec(tmp_path / "m2").model.discrete.shape == "m2"


@pytest.mark.integration
def test_encode_h5ad_copies_the_input(tmp_path):
    write_h5ad(tmp_path / "cells.h5ad")
    before = (tmp_path / "cells.h5ad").read_bytes()
    code, _, err = run_cli("train", "--data", tmp_path / "cells.h5ad", "--model", "count_zinb", "--set", "data.layer=counts",
                           "--set", "model.encoder_input=log1p", "--set", "model.likelihood.library_size=true",
                           "--set", "inference.schedule.epochs=2", "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("encode", tmp_path / "run", "--out", tmp_path / "cells.h5ad")
    assert_one_line_error(code, err, "is the input file")
    code, _, err = run_cli("encode", tmp_path / "run", "--out", tmp_path / "latent.h5ad")
    assert code == 0, err
    assert (tmp_path / "cells.h5ad").read_bytes() == before
    adata = anndata.read_h5ad(tmp_path / "latent.h5ad")
    run = load_run(tmp_path / "run")
    counts = adata.layers["counts"].toarray()
    expected = run.vae.q(run.prepare(counts)).mean.detach().numpy()
    assert np.allclose(adata.obsm["X_pyro_vae"], expected, atol=1e-5)
    assert adata.obsm["X_pyro_vae_std"].shape == expected.shape and (adata.obsm["X_pyro_vae_std"] > 0).all()
    # the draws of one split go to their cells' rows pass by pass (rows of other cells NaN)
    code, _, err = run_cli("encode", tmp_path / "run", "--split", "valid", "--samples", "400", "--out", tmp_path / "draws.h5ad")
    assert code == 0, err
    draws = anndata.read_h5ad(tmp_path / "draws.h5ad").obsm["X_pyro_vae_samples"]
    valid = np.flatnonzero(~np.isnan(draws[:, 0, 0]))
    assert draws.shape == (adata.n_obs, 400, run.vae.latent_dim) and 0 < len(valid) < adata.n_obs
    assert np.isnan(draws[np.setdiff1d(np.arange(adata.n_obs), valid)]).all() and not np.isnan(draws[valid]).any()
    std = adata.obsm["X_pyro_vae_std"][valid]
    assert (np.abs(draws[valid].mean(1) - expected[valid]) < 6 * std / np.sqrt(400)).all()
