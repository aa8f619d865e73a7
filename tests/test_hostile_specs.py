"""Hostile specs: random mutations of the shipped specs and random --set strings.

The CLI must either run (exit 0; 3 if training diverges, with one line) or exit 2 with
a one-line message: never a traceback, never a hang, never a write outside the run
directory. Every case is validated with `train --check`; the valid ones with a small
model are also trained (one epoch, bounded by an extra --set so the test stays short).
"""

import contextlib
import copy
import io
import os
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae.cli import main
from pyro_vae.spec import shipped

pytestmark = pytest.mark.integration  # every test here runs the command line or other processes

MODELS = [tomllib.loads(p.read_text())["model"] for p in shipped("models").values()]
INFERENCE = [tomllib.loads(p.read_text())["inference"] for p in shipped("inference").values()]
KEYS = [
    "model.latent_dim", "model.prior.kind", "model.prior.components", "model.likelihood.kind", "model.likelihood.scale",
    "model.posterior.kind", "model.posterior.steps", "model.encoder.hidden", "model.encoder.kind", "model.decoder.hidden",
    "model.decoder.activation", "inference.estimator.kind", "inference.estimator.k", "inference.optimizer.lr",
    "inference.schedule.batch_size", "inference.schedule.beta", "inference.schedule.device", "data.binarize",
    "data.valid_fraction", "data.name", "data.path", "data.normalize", "nonsense.key", "model", "model.prior",
]
EXAMPLES = int(os.environ.get("PYRO_VAE_HOSTILE_EXAMPLES", "150"))
COUNTS: Counter = Counter()

scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.sampled_from([0, -1, 1, 2**31, 10**9, 16384, 1025]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["mlp", "conv", "vamp", "iaf", "flow", "zinb", "categorical", "cuda", "static", "pkg.mod:Nope", "ü∂ƒ",
                     "os:_exit", "code:interact", "builtins:print", "os:path", "..:Y", ".x:Y", "antigravity:X"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)),
    max_leaves=10,
)
set_values = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["[]", "[0]", "[1, 2]", "[16384, 16384, 16384]", "{a = 1}", "nan", "inf", "-inf", "1e400", '"x"', "true",
                     "mixture", "vamp", "iaf", "conv", "1e-30", "../../outside.npz", "/dev/null", "os:_exit",
                     "code:interact", "os:path", "..:Y", "[" * 2000 + "]" * 2000]),
)
set_strings = st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), set_values))


def _paths(node, prefix=()):
    if isinstance(node, dict):
        yield prefix
        for key, child in node.items():
            yield from _paths(child, prefix + (key,))
    else:
        yield prefix


@st.composite
def hostile_spec(draw):
    raw = {
        "model": copy.deepcopy(draw(st.sampled_from(MODELS))),
        "inference": copy.deepcopy(draw(st.sampled_from(INFERENCE))),
        "data": {"name": "digits"},
    }
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(list(_paths(raw))[1:]))
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "add", "delete", "nest", "empty"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(min_size=1, max_size=8))] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "nest":
            parent[path[-1]] = {"deeper": {"still": {"deeper": parent[path[-1]]}}}
        elif action == "empty":
            parent[path[-1]] = [] if draw(st.booleans()) else {}
    return raw, draw(st.lists(set_strings, max_size=3))


def _files(root: Path, skip: Path) -> set:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


def _cli(args, cwd):
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exit_:  # argparse
                code = exit_.code
    finally:
        os.chdir(previous)
    return code, out.getvalue(), err.getvalue()


def _check_outcome(code, stderr, label):
    assert code in (0, 2, 3), f"{label}: exit {code}\n{stderr}"
    assert "Traceback" not in stderr, f"{label}:\n{stderr}"
    if code != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"{label}: not one line:\n{stderr}"


def _run_cases(tmp_root: Path):
    counter = iter(range(10**9))

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=hostile_spec())
    def one(case):
        raw, overrides = case
        work = tmp_root / f"case{next(counter)}"
        work.mkdir()
        spec_file = work / "spec.toml"
        spec_file.write_text(tomli_w.dumps(raw))
        out = work / "run"
        sets = [arg for s in overrides for arg in ("--set", s)]
        before = _files(work, out)
        COUNTS["cases"] += 1
        code, stdout, stderr = _cli(["train", "--spec", str(spec_file), "--out", str(out), "--check", *sets], work)
        _check_outcome(code, stderr, f"--check {raw} {overrides}")
        assert not out.exists(), "--check must not write the run directory"
        if code == 2:
            COUNTS["refused"] += 1
        else:
            COUNTS["valid"] += 1
            parameters = int(re.search(r"([\d,]+) parameters", stdout).group(1).replace(",", ""))
            if parameters < 2_000_000:
                bounded = [*sets, "--set", "inference.schedule.epochs=1", "--quiet"]
                code, _, stderr = _cli(["train", "--spec", str(spec_file), "--out", str(out), *bounded], work)
                _check_outcome(code, stderr, f"train {raw} {overrides}")
                COUNTS[{0: "trained", 2: "refused at training", 3: "diverged"}[code]] += 1
        assert _files(work, out) == before, "a file was written outside the run directory"

    one()


def test_hostile_specs_never_crash(tmp_path, capsys):
    COUNTS.clear()
    _run_cases(tmp_path)
    with capsys.disabled():
        print(f"\nhostile specs: {COUNTS['cases']} cases tried; {COUNTS['refused']} refused with exit 2 by --check, "
              f"{COUNTS['valid']} valid, of which {COUNTS['trained']} trained, {COUNTS['diverged']} diverged (exit 3), "
              f"{COUNTS['refused at training']} refused at training")
    assert COUNTS["cases"] >= EXAMPLES * 0.9
    assert COUNTS["refused"] > 0 and COUNTS["trained"] > 0


# --- crafted run directories -----------------------------------------------------------------------

RUN_EXAMPLES = int(os.environ.get("PYRO_VAE_HOSTILE_RUNS", "24"))
RUN_COUNTS: Counter = Counter()
CASE_SECONDS = 120  # a case that takes longer hangs
RUN_FILES = ["checkpoint.pt", "spec.toml", "manifest.json", "metrics.csv", "summary.json", "evaluation", "samples",
             "figures"]
COMMANDS = [
    ["evaluate", "{run}", "--samples", "3", "--limit", "8"],
    ["sample", "{run}", "--n", "3"],
    ["encode", "{run}", "--out", "{work}/codes.npz", "--split", "valid"],
    ["train", "--resume", "{run}", "--set", "inference.schedule.epochs=2", "--quiet"],
    ["train", "--out", "{run}", "--force", "--set", "inference.schedule.epochs=1", "--set", "model.latent_dim=2",
     "--quiet"],
    ["train", "--check", "--spec", "{run}/spec.toml"],
]


@st.composite
def run_mutation(draw):
    name = draw(st.sampled_from(RUN_FILES))
    action = draw(st.sampled_from(["flip", "truncate", "garbage", "toml", "symlink", "file", "delete", "folder"]))
    return name, action, draw(st.binary(max_size=64)), draw(st.integers(0, 10**6)), draw(values), \
        draw(st.sampled_from(COMMANDS))


def _mutate(run: Path, outside: Path, name: str, action: str, garbage: bytes, at: int, value) -> None:
    import shutil

    target = run / name
    if action in ("symlink", "file", "folder") or not target.exists() or target.is_dir():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if action == "symlink":
            target.symlink_to(outside)
        elif action == "file":
            target.write_bytes(garbage)
        elif action == "folder":
            target.mkdir()
        return
    data = target.read_bytes()
    if action == "delete":
        target.unlink()
    elif action == "truncate":
        target.write_bytes(data[: at % (len(data) + 1)])
    elif action == "garbage":
        target.write_bytes(garbage)
    elif action == "flip" and data:
        flipped = bytearray(data)
        flipped[at % len(data)] ^= 0xFF
        target.write_bytes(bytes(flipped))
    elif action == "toml" and name == "spec.toml":
        raw = tomllib.loads(data.decode())
        paths = list(_paths(raw))[1:]
        path = paths[at % len(paths)]
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
        target.write_text(tomli_w.dumps(raw))


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"a case ran over {CASE_SECONDS} s")


def test_crafted_run_directories_never_crash(tmp_path, capsys):
    """A trained run with one file deleted, truncated, flipped, replaced, mutated (spec.toml),
    or a link, a file or a folder planted in its place; each command that reads a run then
    ends in a clean run or one line with exit 2, never a traceback, a crash or a hang, and
    writes nothing outside the run (or the output named)."""
    import shutil
    import signal

    RUN_COUNTS.clear()
    original = tmp_path / "original"
    assert main(["train", "--out", str(original), "--set", "inference.schedule.epochs=1", "--set", "model.latent_dim=2",
                 "--quiet"]) == 0
    counter = iter(range(10**9))

    @settings(max_examples=RUN_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
    @given(case=run_mutation())
    def one(case):
        name, action, garbage, at, value, command = case
        work = tmp_path / f"case{next(counter)}"
        run, outside = work / "run", work / "outside"
        shutil.copytree(original, run)
        outside.mkdir()
        _mutate(run, outside, name, action, garbage, at, value)
        args = [a.format(run=run, work=work) for a in command]
        before = _files(work, run) - {work / "codes.npz"}
        RUN_COUNTS["cases"] += 1
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_SECONDS)
        try:
            code, _, stderr = _cli(args, work)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        _check_outcome(code, stderr, f"{name} {action} then {' '.join(command[:2])}")
        RUN_COUNTS[{0: "ran", 2: "refused", 3: "diverged"}[code]] += 1
        assert _files(work, run) - {work / "codes.npz"} == before, "a file was written outside the run directory"

    one()
    with capsys.disabled():
        print(f"\ncrafted run directories: {RUN_COUNTS['cases']} cases; {RUN_COUNTS['ran']} ran cleanly, "
              f"{RUN_COUNTS['refused']} refused with one line (exit 2), {RUN_COUNTS['diverged']} diverged (exit 3)")
    assert RUN_COUNTS["cases"] >= RUN_EXAMPLES * 0.9 and RUN_COUNTS["refused"] > 0
