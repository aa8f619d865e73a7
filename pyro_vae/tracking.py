"""Experiment tracking: a run's resolved spec, its metrics rows as they are written, its
figures and its final summary, sent to TensorBoard or MLflow (the spec's ``[tracking]``
table, or ``--track``). Both libraries are optional extras, imported when a tracker is
built; without them the run is refused with one line, before anything is written.

A tracker only reads what the run directory already holds; it draws no random numbers
and changes nothing in training. Its writes are asynchronous (TensorBoard's event-file
queue; MLflow's asynchronous logging), so an epoch does not wait for them.

A resumed run continues its tracking: the same TensorBoard folder, the same MLflow run
(its id is kept in ``RUN/tracking.json``), and the rows the checkpoint holds that a kill
kept from the tracker are sent again (TensorBoard purges its own later events).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

from .errors import RunError, SpecError
from .files import atomic_write_json
from .params import NonNegativeFloat
from .registry import Registry

TRACKERS = Registry("tracker")
TRACKING_STATE = "tracking.json"
MLFLOW_STORE, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"  # the local MLflow store's database and artifacts
TRACKING_FILES = (TRACKING_STATE, MLFLOW_STORE)  # what trackers write in a run directory
TRACKING_FOLDERS = ("tensorboard", MLFLOW_ARTIFACTS)


def flat_parameters(table: dict, prefix: str = "") -> dict[str, str]:
    """Nested spec tables -> {"model.prior.kind": "vamp", ...}, values as text."""
    flat = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_parameters(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return flat


TARGET_KEYS = {"tensorboard": "log_dir", "mlflow": "uri"}  # where each tracker sends, when not the run directory


def target_outside(table: Optional[dict], run_dir: Path) -> Optional[tuple[str, str]]:
    """``(key, value)`` of a tracking table that sends outside ``run_dir`` (a TensorBoard
    ``log_dir`` elsewhere, an MLflow ``uri`` that is not a local store inside the run, e.g.
    a server); None when it stays inside the run directory (or there is no tracking)."""
    if not table or table.get("kind") not in TARGET_KEYS:
        return None
    key = TARGET_KEYS[table["kind"]]
    value = table.get(key)
    if value is None:
        return None
    local = value if key == "log_dir" else _sqlite_file(value) or (value.removeprefix("file://") if value.startswith("file://") else None)
    if local is not None and Path(local).resolve().is_relative_to(Path(run_dir).resolve()):
        return None
    return key, value


def check_stores(run_dir: Path) -> None:
    """A tracker writes its stores inside the run (``tensorboard/``, ``mlflow.db``,
    ``mlartifacts/``, the tracking state): a symbolic link in their place (a received run
    may hold one, pointing anywhere), or a file where a folder belongs, is refused in one
    line before anything is written."""
    for name in (*TRACKING_FILES, *TRACKING_FOLDERS):
        path = Path(run_dir) / name
        if path.is_symlink():
            raise RunError(f"{path}: is a symbolic link (to {os.readlink(path)}); a tracker writes only inside the run "
                           "directory: remove the link, or copy the run")
        if name in TRACKING_FOLDERS and path.exists() and not path.is_dir():
            raise RunError(f"{path}: exists and is not a folder; move it away, then run again")


def tracking_outputs(run_dir: Path) -> list[Path]:
    """The files trackers wrote into a run directory (its local stores): for its manifest."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in TRACKING_FILES if (run_dir / name).is_file()]
    for name in TRACKING_FOLDERS:
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():
            files += [p for p in (run_dir / name).rglob("*") if p.is_file() and not p.is_symlink()]
    return files


def _missing(package: str, extra: str) -> SpecError:
    return SpecError(f"tracking.kind = \"{extra}\" needs the {package} package, which is not installed; "
                     f"pip install 'pyro-vae[{extra}]', or leave tracking out")


@TRACKERS.protocol
class Tracker:
    """Where a run's progress is sent. ``start`` once the run directory is claimed,
    ``log_rows`` with every metrics row (each once), ``finish`` with the summary and the
    figures' folder when the run ends (completed, stopped early, diverged or interrupted)."""

    def start(self, run_dir: Path, spec: dict, spec_text: str, resumed: bool, history: list[dict]) -> None:
        """``history``: the metrics rows a resumed run restored (it sends those it lacks)."""
        raise NotImplementedError

    def log_rows(self, rows: list[dict]) -> None:
        raise NotImplementedError

    def finish(self, summary: dict, figures: Optional[Path]) -> None:
        raise NotImplementedError


def _scalars(row: dict):
    """A metrics row's finite values, as (name, value), without its epoch (the step)."""
    return ((key, float(value)) for key, value in row.items()
            if key != "epoch" and value is not None and math.isfinite(value))


def _figures(folder: Optional[Path]) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder is not None and folder.is_dir() else []


@TRACKERS.register("tensorboard")
class TensorBoard(Tracker):
    """Event files in ``log_dir`` (default ``RUN/tensorboard``): each metric as a scalar
    ``metrics/<name>`` per epoch, the spec as text and as hyperparameters, the figures as
    images, the summary as text (``tensorboard --logdir RUN/tensorboard``)."""

    # events queued for the writer's thread before the training thread waits for it: with
    # SummaryWriter's default of 10 and an event per scalar, 8 a row, rows logged in a burst
    # (a resumed run's history) made the training thread wait about 1.4 ms a row (BENCHMARKS.md)
    QUEUE = 1000

    def __init__(self, *, log_dir: Optional[str] = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self._writer_class, self.log_dir, self.writer = SummaryWriter, log_dir, None

    def start(self, run_dir, spec, spec_text, resumed, history):
        from torch.utils.tensorboard.summary import hparams

        folder = Path(self.log_dir) if self.log_dir else Path(run_dir) / "tensorboard"
        # resumed: every restored row again, and TensorBoard hides the earlier events from step 1 on
        # (a kill can lose the last 2 minutes of events, which the writer buffers)
        self.writer = self._writer_class(log_dir=str(folder), purge_step=1 if resumed and history else None,
                                         max_queue=self.QUEUE)
        self.log_rows(history)
        if not resumed:
            self.writer.add_text("spec", "```toml\n" + spec_text + "```", 0)
            for event in hparams(flat_parameters(spec), {}):
                self.writer.file_writer.add_summary(event)

    def log_rows(self, rows):
        """One event per epoch holding all its scalars (``add_scalar`` would make one per
        metric), queued for the writer's thread: one put per epoch, never a wait."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        for row in rows:
            values = [Summary.Value(tag=f"metrics/{key}", simple_value=value) for key, value in _scalars(row)]
            self.writer.file_writer.add_summary(Summary(value=values), int(row["epoch"]))

    def finish(self, summary, figures):
        import matplotlib.image

        step = int(summary.get("epochs") or 0)
        for path in _figures(figures):
            self.writer.add_image(f"figures/{path.stem}", matplotlib.image.imread(path)[..., :3], step, dataformats="HWC")
        self.writer.add_text("summary", "```json\n" + json.dumps(summary, indent=2, default=str) + "\n```", step)
        self.writer.close()


def _forget_removed_database(uri: str) -> None:
    """Work around mlflow/mlflow#4808 (open): MLflow keeps one SQLAlchemy engine per database
    URI for the life of the process, and once a SQLite file is removed (``force`` replacing
    a run, in the same process: a comparison, a notebook) that engine's connections still
    point at the removed file: "attempt to write a readonly database". For a local database
    that no longer exists, the cached engine and the cached stores are dropped, so that a new
    store creates the new file's tables."""
    database = _sqlite_file(uri)
    if database is None or database.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()
        TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()  # the stores that held it


def _sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a local SQLite tracking URI (``sqlite:///PATH``); None for others."""
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


def _artifacts_beside(uri: str) -> Optional[str]:
    """A local SQLite store keeps its artifacts next to it (MLflow's default is the working
    directory); a server decides for itself."""
    database = _sqlite_file(uri)
    return None if database is None else (database.parent / MLFLOW_ARTIFACTS).as_uri()


@TRACKERS.register("mlflow")
class MLflow(Tracker):
    """An MLflow run in ``experiment``, at ``uri`` (any tracking URI; default a local
    SQLite store under the run directory, ``sqlite:///RUN/mlflow.db``, with artifacts in
    ``RUN/mlartifacts``: MLflow 3 refuses its old ``./mlruns`` file store). Logged: the
    spec as parameters and ``spec.toml``, each metric per epoch (sent at most every
    ``flush_seconds``, and at the end), the figures and
    ``summary.json`` as artifacts, and the run's end as its status (``mlflow ui
    --backend-store-uri sqlite:///RUN/mlflow.db``)."""

    def __init__(self, *, uri: Optional[str] = None, experiment: str = "pyro-vae", flush_seconds: NonNegativeFloat = 5.0):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        self._client_class, self.uri, self.experiment = MlflowClient, uri, experiment
        self.flush_seconds, self.flushed, self.rows = flush_seconds, -math.inf, []
        self.client, self.run_id, self.pending = None, None, []

    def start(self, run_dir, spec, spec_text, resumed, history):
        from mlflow.entities import Param, RunTag

        run_dir = Path(run_dir).resolve()
        for name in ("mlflow", "alembic"):  # their database set-up is not the run's news
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = self.uri or f"sqlite:///{run_dir / MLFLOW_STORE}"
        _forget_removed_database(uri)
        self.client = self._client_class(tracking_uri=uri)
        state_path = run_dir / TRACKING_STATE
        state = json.loads(state_path.read_text()) if resumed and state_path.is_file() else {}
        if state.get("mlflow_uri") == uri:
            self.run_id = state["mlflow_run_id"]
            logged = max((m.step for m in self.client.get_metric_history(self.run_id, "val_elbo")), default=0)
            self.rows = [(int(time.time() * 1000), row) for row in history if row["epoch"] > logged]
        else:
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                self.experiment, artifact_location=_artifacts_beside(uri))
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            atomic_write_json(state_path, {"mlflow_uri": uri, "mlflow_run_id": self.run_id})
            params = [Param(k, v[:6000]) for k, v in flat_parameters(spec).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.client.log_text(self.run_id, spec_text, "spec.toml")
        # the asynchronous logger's threads start now, not in the first epoch
        self.pending.append(self.client.log_batch(self.run_id, tags=[RunTag("pyro_vae.run", str(run_dir))],
                                                  synchronous=False))

    def log_rows(self, rows):
        """Rows are sent together, at most every ``flush_seconds`` (a send costs about 6 ms of
        the process's CPU, see BENCHMARKS.md: every epoch, over 2% of a 0.3 s epoch); the rest
        at the end."""
        self.rows += [(int(time.time() * 1000), row) for row in rows]
        if time.perf_counter() - self.flushed >= self.flush_seconds:
            self._send()

    def _send(self):
        from mlflow.entities import Metric

        metrics = [Metric(key, value, stamp, int(row["epoch"])) for stamp, row in self.rows for key, value in _scalars(row)]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.pending.append(self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000], synchronous=False))
        self.rows, self.flushed = [], time.perf_counter()

    def finish(self, summary, figures):
        self._send()
        for operation in self.pending:  # every metric stored before the run is marked ended
            operation.wait()
        for path in _figures(figures):
            self.client.log_artifact(self.run_id, str(path), "figures")
        self.client.log_dict(self.run_id, summary, "summary.json")
        status = {"completed": "FINISHED", "early_stopped": "FINISHED", "interrupted": "KILLED"}
        self.client.set_terminated(self.run_id, status.get(summary.get("status"), "FAILED"))
