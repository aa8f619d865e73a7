"""The SVI loop: epochs of mini-batch steps, validation, early stopping, checkpoints.

Each step is ``SVI.step(x, index)`` with the spec's estimator (Trace_ELBO by default)
and a :class:`~pyro_vae.infer.optim.SingleOptimizer`. Data stay on the device; each
epoch draws a permutation from a generator of its own (seeded with the schedule's
seed), so the data order does not depend on the estimator's use of random numbers.

At the end of every epoch (and every ``checkpoint_every`` steps) the checkpoint holds
all the state the next step depends on: weights, optimizer state, the torch, CUDA and
data-order RNG states, the step counters (which fix the KL warm-up position), the
early-stopping state and the metrics so far. A run killed at any moment and resumed
from it continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import pyro
import torch
from pyro.infer import SVI

from .. import distributed
from ..devices import denormals_flushed
from ..errors import Interrupted, NotTraceable, SpecError, TrainingDiverged
from ..stops import stop_requests
from .compiled import CompiledStep, compile_backend, outside_library
from .estimators import ESTIMATORS, applied_to, check_estimator_fits
from .evaluate import elbo_terms
from . import pyro_internals
from .loop import PROGRESS_EVERY, CheckpointClock, Progress, StopVote
from .optim import OPTIMIZERS, SingleOptimizer
from .schedules import LR_SCHEDULES, ConstantRate, kl_weight

VALIDATION_BLOCK = 1024  # validation examples per seeded block (the same blocks whatever the number of ranks)


def say_on_stderr(text: str) -> None:
    """The default log: a line on stderr."""
    print(text, file=sys.stderr)


@dataclass
class TrainState:
    """Counters and early-stopping state; with weights, optimizer and RNGs, all a resume needs."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_loss: float = 0.0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    best_val: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)


class Trainer:
    """Fits a VAE to a Dataset as an InferenceSpec says. ``save(checkpoint)``, when given,
    is called with the full training state at every checkpoint (see ``_RunWriter``)."""

    def __init__(
        self,
        vae,
        data,
        inference,
        *,
        save: Optional[Callable] = None,
        progress: Optional[bool] = None,
        log=None,
        on_epoch: Optional[Callable[["Trainer"], None]] = None,
    ):
        self.vae, self.data, self.inference = vae, data, inference
        self.on_epoch = on_epoch  # called after each completed epoch (e.g. to measure gradients)
        self.schedule = inference.schedule
        self.save = save
        self.progress = progress
        self.log = log or say_on_stderr
        self.group = distributed.current()
        if not self.group.is_main:  # one rank speaks
            self.progress, self.log = False, (lambda text: None)
        self.device = data.split("train").device
        self.num_data = len(data.split("train"))
        self.batch_size = min(self.schedule.batch_size, self.num_data)  # the global batch B
        distributed.check_batch(self.batch_size, self.group)
        self.local_batch = slice(self.group.rank * self.batch_size // self.group.world_size,
                                 (self.group.rank + 1) * self.batch_size // self.group.world_size)
        # full batches only: with a fresh random order each epoch, every step is an unbiased
        # estimate of the full-data objective, and shapes stay static (as Pyro's JIT needs)
        self.steps_per_epoch = self.num_data // self.batch_size
        self.estimator = ESTIMATORS.build(inference.estimator)
        check_estimator_fits(self.estimator, inference.estimator["kind"], self.group, self.batch_size, self.num_data)
        self._set_up_svi()
        self.data_rng = torch.Generator(device=self.device).manual_seed(self.schedule.seed)
        self.epoch_start_rng = self.data_rng.get_state()
        self.state = TrainState()
        self.best_weights: Optional[dict] = None
        self._validated = False
        self.stop_vote = StopVote(self.group)
        self.clock = CheckpointClock(self.schedule.checkpoint_every, self.steps_per_epoch)
        self.compiled = self._compiled_step()
        self._unread = None  # compiled steps' losses not read yet

    def _set_up_svi(self) -> None:
        """The VAE set up for the estimator, every rank from rank 0's weights, the optimizer
        and ``SVI(model, guide, optimizer, loss)``."""
        vae, inference = self.vae, self.inference
        vae.num_data = self.num_data
        vae.use_estimator(self.estimator, inference.estimator["kind"])
        self.temperature_schedule = getattr(self.estimator, "temperature", None)  # a relaxed discrete latent's
        pyro.clear_param_store()  # pyro.module then registers this VAE's parameters, not an earlier VAE's of the same name
        self.group.broadcast_module(vae)  # every rank starts from rank 0's weights
        if self.group.rank:  # latent draws per (seed, rank); rank 0 keeps the one-process stream
            torch.manual_seed(distributed.rank_seed(self.schedule.seed, self.group.rank))
        self.optim = SingleOptimizer(OPTIMIZERS.build(inference.optimizer, list(vae.parameters())), self.schedule.clip_norm,
                                     self.group.average_gradients if self.group.active else None)
        self.lr_schedule = LR_SCHEDULES.build(inference.lr_schedule)
        groups = self.optim.optimizer.param_groups
        if not isinstance(self.lr_schedule, ConstantRate) and any("lr" not in group for group in groups):
            raise SpecError(f"inference.lr_schedule: the optimizer {type(self.optim.optimizer).__name__} has no "
                            "learning rate 'lr' to schedule; use inference.lr_schedule.kind = \"constant\"")
        self.base_lrs = [group.get("lr") for group in groups]  # None: an optimizer of the user's without a rate
        self._lr_epoch: Optional[int] = None  # the epoch the groups' rates were last set for
        loss = applied_to(self.estimator, vae)  # with labelled examples, part by part (issue 28)
        self.svi = SVI(vae.model, vae.guide, self.optim, loss=loss.loss, loss_and_grads=loss.loss_and_grads)

    def _compiled_step(self) -> Optional[CompiledStep]:
        """The compiled step ``inference.schedule.compile`` asks for, or None (eager); with
        ``compile = auto``, a line saying why where the choice is not the obvious one."""
        s, foreign = self.schedule, outside_library(self.vae)
        steps = s.epochs * self.steps_per_epoch
        backend = compile_backend(s.compile, self.device, foreign, steps)
        if foreign and s.compile == "auto" and compile_backend("auto", self.device, (), steps):
            self.log(f"inference.schedule.compile = auto: {', '.join(foreign)} not the library's (its Python "
                     "state would be traced once); training eagerly, set compile = true to trace it")
        if backend == "inductor" and s.compile == "auto":
            self.log("inference.schedule.compile = auto: a long run, so Inductor compiles the step first "
                     "(10-20 s, once; then about 1 ms a step saved); compile = \"graph\" skips the compilation")
        return None if backend is None else CompiledStep(self.vae, self.estimator, self.optim.params, backend)

    # --- checkpoint state ------------------------------------------------------------

    @property
    def keeps_best(self) -> bool:
        """Whether the saved weights are the best epoch's (early stopping on, and some epoch
        done) rather than the last's."""
        return self.schedule.patience > 0 and self.best_weights is not None

    def checkpoint(self) -> dict:
        """Everything the next step depends on, as tensors and plain containers. Under several
        processes every rank's RNG states are gathered (a collective: every rank calls this)."""
        rng = {"torch": torch.get_rng_state(), "data": self.data_rng.get_state(), "data_epoch": self.epoch_start_rng}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.group.active:
            rng["torch_ranks"] = self.group.gather_rows(rng["torch"])
            if "cuda" in rng:
                rng["cuda_ranks"] = self.group.gather_rows(rng["cuda"])
        last = {k: v.detach().clone() for k, v in self.vae.state_dict().items()}
        # TraceGraph_ELBO keeps its decaying-average baselines in Pyro's param store, each rank
        # its own (averages of its own shard's costs): every rank's is kept, as the RNG states are
        baselines = pyro_internals.baselines()
        if self.group.active:
            baselines = {k: self.group.gather_rows(v) for k, v in baselines.items()}
        return {
            "weights": self.best_weights if self.keeps_best else last,
            "training": {
                "last_weights": last,
                "optimizer": self.optim.get_state(),
                "rng": rng,
                "state": asdict(self.state),
                "world_size": self.group.world_size,
                "baselines" if not self.group.active else "baselines_ranks": baselines,
            },
        }

    def restore(self, checkpoint: dict) -> None:
        training = checkpoint["training"]
        self.vae.load_state_dict(training["last_weights"])
        self.optim.set_state(training["optimizer"])
        self._lr_epoch = None  # the saved groups' rates are the schedule's; set them again all the same
        self.state = TrainState(**training["state"])
        # a run begun before the metrics had an "lr" (2026-12-07) had no schedule: its epochs ran at the optimizer's rate
        for row in self.state.history:
            row.setdefault("lr", self.base_lrs[0] if self.base_lrs[0] is not None else math.nan)
        rank = self.group.rank
        pyro_internals.set_baselines({name: value.to(self.device) for name, value in training.get("baselines", {}).items()})
        # (W, ...): each rank takes its own
        pyro_internals.set_baselines({name: value[rank].clone().to(self.device)
                                      for name, value in training.get("baselines_ranks", {}).items()})
        rng = training["rng"]
        # clone(): a row of the gathered states is a view at an offset into their storage, and
        # torch.set_rng_state rejects it ("Invalid mt19937 state") where a copy of it is fine
        torch.set_rng_state((rng["torch_ranks"][rank] if "torch_ranks" in rng else rng["torch"]).cpu().clone())
        if "cuda" in rng and self.device.type == "cuda":
            state = rng["cuda_ranks"][rank] if "cuda_ranks" in rng else rng["cuda"]
            torch.cuda.set_rng_state(state.cpu().clone(), self.device)
        self.data_rng.set_state(rng["data"].cpu())
        self.epoch_start_rng = rng["data_epoch"].cpu()
        if self.schedule.patience > 0 and self.state.best_epoch > 0:
            self.best_weights = checkpoint["weights"]

    # --- the loop --------------------------------------------------------------------

    def fit(self) -> TrainState:
        s, state = self.schedule, self.state
        progress = Progress(s.epochs * self.steps_per_epoch, state.global_step, self.progress, self.log)
        with progress, stop_requests() as requested, warnings.catch_warnings(), denormals_flushed():
            # a non-finite loss stops training with our own one-line message; Pyro's warning would repeat it
            warnings.filterwarnings("ignore", message=r"Encountered (NaN|[+-]?inf)", category=UserWarning)
            while state.epoch < s.epochs and not state.stopped_early:
                self.run_epoch(progress, requested)
                row = self._validate()
                self.end_epoch(row)
                if self.on_epoch is not None:
                    self.on_epoch(self)
                progress.epoch(row, s.epochs, state.stopped_early)
        if self.keeps_best:
            self.vae.load_state_dict(self.best_weights)
        self.vae.eval()
        return state

    def run_epoch(self, progress: Optional[Progress] = None, requested: Sequence[int] = ()) -> float:
        """The remaining SVI steps of the current epoch; returns their seconds so far.

        Pyro's argument validation is on for the trainer's first step (it catches shape
        mistakes in a user's own component) and off afterwards: the data were checked
        against the likelihood's support before training.
        """
        state, B = self.state, self.batch_size
        order = self._epoch_order()
        self.vae.train()
        self._started = time.perf_counter()
        steps = range(state.step_in_epoch, self.steps_per_epoch)
        # this rank's slice of each global batch (a streamed split is read ahead in the background)
        batches = self.data.batches((order[i * B : (i + 1) * B] for i in steps), self.data_rng, self.local_batch)
        try:
            for i, x in zip(steps, batches):
                self._train_step(i, x, order[i * B : (i + 1) * B][self.local_batch], progress, requested)
        finally:
            batches.close()  # stops a read-ahead thread at once, whatever ended the loop
        state.epoch_seconds += time.perf_counter() - self._started
        return state.epoch_seconds

    def _epoch_order(self) -> torch.Tensor:
        """The epoch's permutation of the training examples, drawn from the data generator's
        state at the epoch's start (so an epoch resumed midway has the same order), leaving
        the generator where it was inside the epoch."""
        if self.state.step_in_epoch == 0:
            self.epoch_start_rng = self.data_rng.get_state()
        current = self.data_rng.get_state()
        self.data_rng.set_state(self.epoch_start_rng)
        order = torch.randperm(self.num_data, generator=self.data_rng, device=self.device)
        if self.state.step_in_epoch:  # resuming inside an epoch: same order, same draws from here on
            self.data_rng.set_state(current)
        return order

    def _train_step(self, i: int, x, index, progress: Optional[Progress], requested: Sequence[int]) -> None:
        """Step i of the epoch on batch x (rows ``index``): the schedules, the step, the
        stop vote, the counters, the progress bar, and a checkpoint where one is due."""
        state = self.state
        self._anneal()
        try:
            with pyro.validation_enabled(not self._validated):
                loss = self._step(x, index, i, requested)
        except TrainingDiverged as exc:
            raise self._diverged(str(exc)) from None
        loss, stop = self.stop_vote(loss, requested)
        self._validated = True
        if loss is not None:
            if not math.isfinite(loss):
                raise self._diverged(f"loss is {loss}")
            state.epoch_loss += loss
        state.global_step += 1
        state.step_in_epoch = i + 1
        if progress is not None:
            progress.step(state.epoch + 1, state.step_in_epoch, self.steps_per_epoch,
                          lambda: -state.epoch_loss / state.step_in_epoch / self.num_data)
        if stop or self.clock.due(state.global_step, i):
            now = time.perf_counter()
            state.epoch_seconds += now - self._started
            self._started = now
            self._save()
            if stop:
                raise Interrupted(requested[0] if requested else signal.SIGTERM, state.epoch + 1, state.step_in_epoch)

    def _anneal(self) -> None:
        """beta, a relaxed y's temperature and the learning rate at the current step
        (``schedules``)."""
        step, s = self.state.global_step, self.schedule
        self.vae.beta = kl_weight(step, self.steps_per_epoch, s.kl_warmup_epochs, s.beta)
        if self.temperature_schedule is not None:
            self.vae.temperature = self.temperature_schedule(step / self.steps_per_epoch)
        if self.state.epoch != self._lr_epoch:
            self._set_learning_rate(self.state.epoch)

    def _set_learning_rate(self, epoch: int) -> None:
        """Each group's rate at ``epoch`` completed epochs: its base rate times f(epoch)."""
        factor = self.lr_schedule(epoch)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise SpecError(f"inference.lr_schedule: {type(self.lr_schedule).__name__} gave the factor {factor!r} "
                            f"after {epoch} epochs; a schedule returns a finite number > 0")
        for group, base in zip(self.optim.optimizer.param_groups, self.base_lrs):
            if base is not None:
                group["lr"] = base * factor
        self._lr_epoch = epoch

    def _step(self, x, index, i: int, requested: Sequence[int]) -> Optional[float]:
        """Step i of the epoch; its loss, or None where a compiled step's loss stays on the
        device (on CUDA reading it waits for the device, so the losses are summed there and
        read every few steps, see ``_read_due``).

        The first step is eager (with Pyro's argument checks); then the compiled step,
        where ``inference.schedule.compile`` asks for one and the estimator and model
        allow it, else one line says why not and the steps stay eager."""
        if self.compiled is None or not self._validated:
            return self.svi.step(x, index)
        try:
            loss = self.compiled.step(x, index, self.vae.beta)
        except NotTraceable as exc:
            self.log(f"inference.schedule.compile: {exc}; training eagerly")
            self.compiled = None
            return self.svi.step(x, index)
        self.optim(self.optim.params)
        self._unread = loss.detach() if self._unread is None else self._unread + loss.detach()
        if not self._read_due(i, requested):
            return None
        loss, self._unread = self._unread.item(), None
        return loss

    def _read_due(self, i: int, requested: Sequence[int]) -> bool:
        """Whether step i's loss must be read now: always off CUDA and under several
        processes (the loss is all-reduced every step); on CUDA at every progress update,
        checkpoint, stop request and epoch end."""
        return (self.device.type != "cuda" or self.group.active or bool(requested) or i % PROGRESS_EVERY == 0
                or i + 1 == self.steps_per_epoch or self.clock.due(self.state.global_step + 1, i))

    def _diverged(self, what: str) -> TrainingDiverged:
        s = self.state
        return TrainingDiverged(
            f"training diverged at epoch {s.epoch + 1}, step {s.step_in_epoch + 1} ({what}); "
            "likely causes: a learning rate too high (lower inference.optimizer.lr), exploding gradients "
            "(set inference.schedule.clip_norm), or a likelihood scale too small (a larger "
            "initial_scale/min_scale, or a learned scale)"
        )

    @torch.no_grad()
    def _validate(self) -> dict:
        """The 1-sample validation ELBO, in seeded blocks of examples shared among the ranks:
        the draws depend on (seed, epoch, block) only, not on the number of ranks, and they
        leave the training random stream untouched."""
        state = self.state
        x, c = self.data.split("valid"), self.data.covariates.get("valid")
        self.vae.eval()

        def terms(rows: slice) -> dict:
            reconstruction, kl = elbo_terms(self.vae, x[rows], condition=None if c is None else c[rows])
            return {"reconstruction": reconstruction, "kl": kl}

        seed = self.schedule.seed * 100_003 + state.epoch
        result = distributed.blockwise(len(x), VALIDATION_BLOCK, self.group, terms, seed)
        rec, kl_mean = result["reconstruction"].double().mean().item(), result["kl"].double().mean().item()
        seconds = state.epoch_seconds
        return {
            "epoch": state.epoch + 1,
            "train_elbo": -state.epoch_loss / self.steps_per_epoch / self.num_data,
            "val_elbo": rec - kl_mean,
            "kl": kl_mean,
            "reconstruction": rec,
            "beta": self.vae.beta,
            "lr": self.optim.optimizer.param_groups[0].get("lr", math.nan),
            "seconds": seconds,
            "examples_per_second": self.steps_per_epoch * self.batch_size / seconds if seconds > 0 else math.nan,
        }

    def end_epoch(self, row: dict) -> None:
        state = self.state
        state.history.append(row)
        state.train_seconds += state.epoch_seconds
        if row["val_elbo"] > state.best_val:
            state.best_val, state.best_epoch, state.bad_epochs = row["val_elbo"], row["epoch"], 0
            if self.schedule.patience > 0:
                self.best_weights = {k: v.detach().clone() for k, v in self.vae.state_dict().items()}
        elif row["epoch"] > self.schedule.kl_warmup_epochs:  # patience counts from the end of the warm-up
            state.bad_epochs += 1
            if self.schedule.patience and state.bad_epochs >= self.schedule.patience:
                state.stopped_early = True
        if not all(torch.isfinite(p).all() for p in self.vae.parameters()):
            raise self._diverged("a parameter is not finite")
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_loss = 0.0
        state.epoch_seconds = 0.0
        self._save()

    def _save(self) -> None:
        if self.save is not None or self.group.active:  # under several ranks the checkpoint is a collective
            checkpoint = self.checkpoint()
            if self.save is not None:
                self.save(checkpoint)
