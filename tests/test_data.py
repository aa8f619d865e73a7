"""Data sources, preparation, and refusal of data outside the likelihood's support; one
normalization rule (integer levels of any dtype, binary bytes in every format, by the
likelihood unless data.normalize says), and dynamic binarization when a split is scored."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from helpers import MNIST, MNIST_IDX, needs_idx, needs_mnist, write_npz
from pyro_vae.data import Dataset, check_support, load_data, prepare, read_source
from pyro_vae.errors import DataError
from pyro_vae.model.likelihoods import LIKELIHOODS
from pyro_vae.spec import DataSpec


def spec(**kw):
    return DataSpec(**{"name": "digits", **kw}) if "path" not in kw else DataSpec(**kw)


def test_digits_is_embedded_normalized_and_split_at_random():
    data = load_data(spec(), seed=0)
    assert data.data_shape == (64,)
    assert sum(len(v) for v in data.splits.values()) == 1797
    assert len(data.splits["valid"]) == len(data.splits["test"]) == round(0.1 * 1797)  # a seeded test split too
    assert 0 <= data.splits["train"].min() and data.splits["train"].max() == 1.0  # levels 0..16 / 16
    assert set(data.labels) == {"train", "valid", "test"}
    everything = torch.cat(list(data.splits.values()))
    assert len(torch.unique(everything, dim=0)) == len(torch.unique(torch.as_tensor(read_source("digits", None).splits["train"].array), dim=0))
    # the validation rows are spread over the file, not its tail
    raw = read_source("digits", None).splits["train"].array / 16
    rows = [int(np.flatnonzero((raw == v.numpy()).all(1))[0]) for v in data.splits["valid"]]
    assert min(rows) < 100 and max(rows) > 1700 and len(set(rows)) > 170
    # the same seed draws the same split, another seed another
    assert torch.equal(load_data(spec(), seed=0).splits["valid"], data.splits["valid"])
    assert not torch.equal(load_data(spec(), seed=1).splits["valid"], data.splits["valid"])


def test_npz_with_own_splits_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "d.npz", train=rng.integers(0, 256, (30, 4, 5), dtype=np.uint8),
                     valid=rng.integers(0, 256, (10, 4, 5), dtype=np.uint8),
                     test=rng.integers(0, 256, (7, 4, 5), dtype=np.uint8), test_labels=np.arange(7))
    data = load_data(spec(path=str(path)), seed=0)
    assert data.data_shape == (4, 5)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 30, "valid": 10, "test": 7}
    assert data.splits["test"].max() <= 1.0  # uint8 divided by 255
    assert torch.equal(data.labels["test"], torch.arange(7))
    raw = load_data(spec(path=str(path), normalize=False), seed=0)
    assert raw.splits["train"].max() > 1 and torch.equal(raw.splits["train"], raw.splits["train"].round())


def test_static_and_dynamic_binarization():
    static = load_data(spec(binarize="static"), seed=0)
    assert set(static.splits["train"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static.splits["train"], load_data(spec(binarize="static"), seed=0).splits["train"])
    dynamic = load_data(spec(binarize="dynamic"), seed=0)
    assert not set(dynamic.splits["train"].unique().tolist()) <= {0.0, 1.0}  # intensities kept
    assert set(dynamic.splits["valid"].unique().tolist()) == {0.0, 1.0}  # held-out drawn once
    g = torch.Generator().manual_seed(0)
    index = torch.arange(64)
    a, b = dynamic.batch(index, g), dynamic.batch(index, g)
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)  # redrawn per batch
    # mean of many draws approaches the intensities
    draws = torch.stack([dynamic.batch(index, g) for _ in range(400)]).mean(0)
    assert torch.allclose(draws, dynamic.splits["train"][index], atol=0.15)  # 6 SE of a mean of 400 draws
    # the units of either: of binary draws, for a probability and for a density alike
    for data in (static, dynamic):
        assert data.preprocessing.binarized and not load_data(spec(), seed=0).preprocessing.binarized
        probability = data.preprocessing.units(data.data_shape, density=False)
        assert probability == "nats per example of the binary draws (data.binarize: each value / 16 the probability of a 1)"
        density = data.preprocessing.units(data.data_shape, density=True)
        assert density.startswith("nats per example, a density at the binary draws") and "subtract" not in density


def test_binarize_needs_intensities(tmp_path):
    path = write_npz(tmp_path / "counts.npz", train=np.arange(40.0).reshape(10, 4))
    with pytest.raises(DataError, match="binarize = 'static' needs intensities in \\[0, 1\\].*rescale the data"):
        load_data(spec(path=str(path), binarize="static"), seed=0)  # floats: normalize would not help
    levels = write_npz(tmp_path / "levels.npz", train=np.arange(40).reshape(10, 4).astype(np.uint8))
    with pytest.raises(DataError, match="set data.normalize = true \\(integer levels 0..255"):
        load_data(spec(path=str(levels), binarize="static", normalize=False), seed=0)


@pytest.mark.parametrize(
    "kind, values, fragments",
    [
        ("bernoulli", np.arange(40.0).reshape(10, 4), ["outside the support of the bernoulli", "..39", "rescale them into [0, 1]"]),
        ("beta", np.tile([0.0, 0.5, 1.0, 0.25], (10, 1)), ["beta", "strictly inside (0, 1)", "continuous_bernoulli"]),
        ("poisson", np.full((10, 4), 0.5), ["poisson", "non-negative integer counts", "normalize = false"]),
        ("categorical", np.full((10, 4), 300.0), ["categorical", "integer levels 0..255"]),
        ("gaussian", np.where(np.eye(10, 4) > 0, np.nan, 1.0), ["NaN or infinite"]),
    ],
)
def test_support_is_checked_with_the_fix(tmp_path, kind, values, fragments):
    path = write_npz(tmp_path / "d.npz", train=values)
    data = load_data(spec(path=str(path)), seed=0)
    likelihood = LIKELIHOODS.build({"kind": kind}, data.data_shape)
    with pytest.raises(DataError) as info:
        check_support(data, likelihood)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_in_support_data_passes(tmp_path):
    path = write_npz(tmp_path / "c.npz", train=np.random.default_rng(0).poisson(3.0, (20, 5)).astype(np.int64))
    likelihood = LIKELIHOODS.build({"kind": "negative_binomial"}, (5,))
    data = load_data(spec(path=str(path)), seed=0, likelihood=likelihood)  # normalize = "auto": counts stay counts
    check_support(data, likelihood)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_source(None, str(tmp_path / "nope.npz"))
    fake = tmp_path / "fake.npz"
    fake.write_text("not a zip")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        read_source(None, str(fake))
    empty = write_npz(tmp_path / "e.npz", images=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no 'train', 'valid' or 'test' array \\(found images\\)"):
        read_source(None, str(empty))
    obj = tmp_path / "o.npz"
    np.savez(obj, train=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="not a readable .npz"):  # object arrays are never unpickled
        read_source(None, str(obj))
    flat = write_npz(tmp_path / "f.npz", train=np.zeros(5))
    with pytest.raises(DataError, match="one row per example"):
        read_source(None, str(flat))
    other = tmp_path / "x.parquet"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported data file"):
        read_source(None, str(other))


def _write_idx(path, array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


def test_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 6, 6), dtype=np.uint8)
    _write_idx(tmp_path / "x-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "x-labels-idx1-ubyte.gz", np.arange(20) % 10)
    raw = read_source(None, str(tmp_path / "x-images-idx3-ubyte.gz"))
    assert np.array_equal(raw.splits["train"].array, images)
    assert np.array_equal(raw.labels["train"], np.arange(20) % 10)
    truncated = tmp_path / "t-images-idx3-ubyte.gz"
    with gzip.open(truncated, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 20, 6, 6) + images.tobytes()[:100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_source(None, str(truncated))
    wrong = tmp_path / "w-images-idx3-ubyte.gz"
    _write_idx(wrong, images, magic_type=0x0D)
    with pytest.raises(DataError, match="bad magic number"):
        read_source(None, str(wrong))


@needs_idx
def test_official_mnist_idx():
    raw = read_source(None, str(MNIST_IDX))
    assert raw.splits["train"].shape == (10000, 28, 28) and raw.max_level == 255
    assert np.bincount(raw.labels["train"]).tolist()[:3] == [980, 1135, 1032]


@needs_mnist
def test_shared_binarized_mnist():
    data = prepare(read_source(None, str(MNIST)), spec(path=str(MNIST)), seed=0)
    # no test array: a seeded test split of 10% is drawn from train; test_fraction = 0 keeps the published 50,000
    assert {k: tuple(v.shape) for k, v in data.splits.items()} == {"train": (45000, 784), "valid": (10000, 784), "test": (5000, 784)}
    data = prepare(read_source(None, str(MNIST)), spec(path=str(MNIST), test_fraction=0.0), seed=0)
    assert {k: tuple(v.shape) for k, v in data.splits.items()} == {"train": (50000, 784), "valid": (10000, 784)}
    assert set(data.splits["valid"].unique().tolist()) == {0.0, 1.0}


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["binomial", "categorical", "discretized_logistic"])
def test_level_likelihoods_take_their_levels_from_the_data(tmp_path, kind):
    """Unset, levels is the source's own maximum (digits: 16; integer arrays in 0..255: 255),
    else the largest value in any split; the run's spec records it; a value beyond it is
    refused with the fix."""
    from pyro_vae.cli import main
    from pyro_vae.runs import read_spec
    from pyro_vae.spec import load_spec
    from pyro_vae.workflows.train import check

    rng = np.random.default_rng(0)
    floats = write_npz(tmp_path / "floats.npz", train=rng.integers(0, 30, (60, 4)).astype(np.float32),
                       valid=np.full((5, 4), 41.0, dtype=np.float32))  # the largest value is in valid
    uint8 = write_npz(tmp_path / "uint8.npz", train=rng.integers(0, 200, (60, 4)).astype(np.uint8))
    for data, levels in (("digits", 16), (str(floats), 41), (str(uint8), 255)):
        spec = load_spec(data=data, overrides=[f"model.likelihood.kind={kind}"])
        vae, prepared = check(spec)
        assert spec.model.likelihood["levels"] == levels and vae.likelihood.levels == levels, data
        assert prepared.split("train").max() <= levels and prepared.split("train").max() > 1  # not divided
    out = tmp_path / "run"
    assert main(["train", "--data", str(floats), "--out", str(out), "--quiet", "--set", f"model.likelihood.kind={kind}",
                 "--set", "inference.schedule.epochs=1", "--set", "model.latent_dim=2"]) == 0
    assert read_spec(out).model.likelihood["levels"] == 41
    given = load_spec(data=str(floats), overrides=[f"model.likelihood.kind={kind}", "model.likelihood.levels=20"])
    with pytest.raises(DataError, match=r"integer levels 0..20.*whole numbers beyond 0..20: leave model.likelihood.levels"):
        check(given)


@pytest.mark.integration
def test_a_test_split_carved_from_a_file_with_its_own_validation_split_is_said(tmp_path, capsys):
    """A file with train and valid but no test (as binarized MNIST): data.test_fraction takes
    its test split from the training rows; training says so in one line and summary.json
    records what was drawn; data.test_fraction = 0 trains on every training row, silently.
    A source with neither (the digits) draws both, recorded, with no line."""
    import json

    from pyro_vae.cli import main

    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "tv.npz", train=rng.random((200, 6)).astype(np.float32),
                     valid=rng.random((40, 6)).astype(np.float32))
    common = ["train", "--model", "gaussian_per_feature", "--data", str(path), "--set", "inference.schedule.epochs=1"]
    assert main([*common, "--out", str(tmp_path / "carved")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "no test split" in line]
    assert said == [f"data: {path} has a validation split but no test split, so data.test_fraction = 0.1 takes 20 of its 200 "
                    "training rows as the test split and trains on 180; set data.test_fraction = 0 to train on all of them"]
    data = json.loads((tmp_path / "carved" / "summary.json").read_text())["data"]
    assert data["train"] == 180 and data["test"] == 20 and data["drawn_from_train"] == {"test": 20}
    assert main([*common, "--set", "data.test_fraction=0", "--out", str(tmp_path / "all")]) == 0
    assert "no test split" not in capsys.readouterr().err
    data = json.loads((tmp_path / "all" / "summary.json").read_text())["data"]
    assert data["train"] == 200 and "test" not in data and "drawn_from_train" not in data
    digits = prepare(read_source("digits", None), spec(), seed=0)
    assert digits.drawn == {"test": 180, "valid": 180}


def test_binary_bytes_stay_binary_in_every_format(tmp_path):
    """Regression: IDX bytes holding only 0 and 1 were divided by 255 ({0, 0.0039}) and passed
    the Bernoulli check; the same bytes in an .npz stayed {0, 1}."""
    binary = (np.random.default_rng(0).random((40, 3, 3)) > 0.5).astype(np.uint8)
    idx = _write_idx(tmp_path / "b-images-idx3-ubyte.gz", binary)
    npz = write_npz(tmp_path / "b.npz", train=binary)
    for path in (idx, npz):
        data = load_data(DataSpec(path=str(path)), seed=0)
        values = torch.cat([data.split("train").flatten(), data.split("valid").flatten()]).unique()
        assert values.tolist() == [0.0, 1.0], path


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_integer_levels_of_any_dtype_are_normalized_alike(tmp_path, dtype):
    """Regression: int64 levels 0..255 were never normalized; uint8 ones were."""
    levels = np.random.default_rng(1).integers(0, 256, (30, 4))
    reference = load_data(DataSpec(path=str(write_npz(tmp_path / "u8.npz", train=levels.astype(np.uint8)))), seed=0)
    other = load_data(DataSpec(path=str(write_npz(tmp_path / "other.npz", train=levels.astype(dtype)))), seed=0)
    assert torch.equal(reference.split("train"), other.split("train"))
    assert reference.split("train").max() <= 1 and reference.split("train").max() > 0.9


def test_auto_normalization_follows_the_likelihood(tmp_path):
    from pyro_vae.model.likelihoods import LIKELIHOODS

    levels = np.random.default_rng(2).integers(0, 256, (30, 4)).astype(np.int64)
    path = str(write_npz(tmp_path / "levels.npz", train=levels))
    for kind, divided in (("bernoulli", True), ("gaussian", True), ("categorical", False), ("poisson", False)):
        data = load_data(DataSpec(path=path, standardize=False), seed=0, likelihood=LIKELIHOODS.resolve(kind))
        assert (data.split("train").max() <= 1) == divided, kind
    forced = load_data(DataSpec(path=path, normalize=True), seed=0, likelihood=LIKELIHOODS.resolve("poisson"))
    assert forced.split("train").max() <= 1
    kept = load_data(DataSpec(path=path, normalize=False), seed=0, likelihood=LIKELIHOODS.resolve("bernoulli"))
    assert kept.split("train").max() > 1
    counts = np.random.default_rng(3).poisson(500, (30, 4))  # past 255: counts, never divided
    assert read_source(None, str(write_npz(tmp_path / "c.npz", train=counts))).max_level is None


@pytest.mark.integration
def test_scoring_a_dynamically_binarized_train_split_draws_binary_data(tmp_path):
    """Regression: evaluate/analyze --split train scored the grayscale intensities."""
    from pyro_vae.cli import main
    from pyro_vae.workflows.evaluate import heldout
    from pyro_vae.runs import load_run

    out = tmp_path / "dynamic"
    assert main(["train", "--model", "bernoulli_mlp", "--out", str(out), "--set", "data.binarize=dynamic", "--set", "inference.schedule.epochs=1",
                 "--quiet"]) == 0
    run = load_run(out, "cpu")
    x = heldout(run, split="train").x
    assert x.unique().tolist() == [0.0, 1.0]
    again = heldout(run, split="train").x
    assert torch.equal(x, again)  # seeded: every command scores the same draw
    # its nats are those of the binary draws, not of the levels / 16 (the run and its summary say so)
    binary = "nats per example of the binary draws (data.binarize: each value / 16 the probability of a 1)"
    assert run.units == json.loads((out / "summary.json").read_text())["units"] == binary
    levels = tmp_path / "levels"
    assert main(["train", "--model", "bernoulli_mlp", "--out", str(levels), "--set", "model.likelihood.kind=binomial",
                 "--set", "inference.schedule.epochs=1", "--quiet"]) == 0
    assert load_run(levels, "cpu").units == "nats per example"
    data = Dataset({"train": torch.full((200, 3), 0.3)}, {}, (3,), "t", dynamic=True)
    assert abs(data.scored("train", 0).mean().item() - 0.3) < 0.06
