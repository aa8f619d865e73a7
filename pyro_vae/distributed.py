"""Several processes, GPUs and machines: torch.distributed as launched by ``torchrun``.

Under torchrun every rank runs the same training loop on its slice of each global
batch; without torchrun's environment variables nothing here does anything.

Semantics, for world size W and global batch B (``inference.schedule.batch_size``):

* every rank draws the same seeded permutation and takes its B/W rows of each global
  batch (W must divide B);
* the data plate of each rank scales its log-densities by N/(B/W), so rank r's gradient
  is g_r = (N W / B) sum_{i in slice r} grad l_i; the one-process gradient on the same
  global batch is (N / B) sum_i grad l_i = (1/W) sum_r g_r. So the gradients are summed
  by one all-reduce (one flat bucket) and divided by W, right before the optimizer steps
  (Pyro's precedent: ``pyro.optim.HorovodOptimizer``), and every rank takes the same
  step: the weights stay identical, as they start (broadcast from rank 0);
* the loss (and a stop request from SIGINT/SIGTERM) is all-reduced with each step, so
  every rank reports the one-process loss and all stop at the same step;
* latent draws come from a torch generator seeded per (seed, rank): rank 0's stream is
  the one-process stream, the others are independent of it;
* held-out examples are split into fixed blocks whose draws are seeded per block, not
  per rank (:func:`blockwise`): per-example results do not depend on W;
* rank 0 alone writes the run directory.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import SpecError, UserError

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other ranks


class SharedError(UserError):
    """Rank 0's error, raised on every rank (rank 0 alone reports it)."""


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks; ``SINGLE`` when there is one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    process_group: Optional[object] = None  # the training group, with the schedule's timeout

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (no-ops for one process) -----------------------------------------

    def _device(self) -> torch.device:
        if dist.is_initialized() and dist.get_backend(self.process_group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum over ranks (a new tensor on ``tensor``'s device)."""
        if not self.active:
            return tensor
        buffer = tensor.detach().to(self._device(), copy=True)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.process_group)
        return buffer.to(tensor.device)

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """grad <- (1/W) sum_r grad_r for every parameter, in one flat all-reduce (a missing
        gradient counts as zeros, so every rank sends the same layout)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if not self.active:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            buffer = tensor.detach().to(self._device(), copy=True)
            dist.broadcast(buffer, src=0, group=self.process_group)
            with torch.no_grad():
                tensor.copy_(buffer.to(tensor.device))

    def gather_rows(self, rows: Tensor) -> Tensor:
        """(W, *rows.shape): every rank's ``rows`` (same shape on every rank)."""
        if not self.active:
            return rows.unsqueeze(0)
        out = [torch.empty_like(rows, device=self._device()) for _ in range(self.world_size)]
        dist.all_gather(out, rows.to(self._device()), group=self.process_group)
        return torch.stack([o.to(rows.device) for o in out])


SINGLE = Group()
_current = SINGLE


def launched() -> bool:
    """Whether torchrun (or the like) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Group:
    return _current


def init() -> Group:
    """Join the process group that torchrun's environment describes (gloo: it carries only
    the resolved spec and other small messages); without torchrun, :data:`SINGLE`. The
    collectives of training and evaluation run in the group of :func:`use_device`."""
    global _current
    if not launched():
        return SINGLE
    if not dist.is_initialized():
        _stop_with_launcher()
        dist.init_process_group("gloo", timeout=timedelta(seconds=DEFAULT_TIMEOUT))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        _current = Group(dist.get_rank(), dist.get_world_size(), local_rank, local_world)
    return _current


def _stop_with_launcher() -> None:
    """torchrun starts its workers in sessions of their own, so a launcher killed with
    SIGKILL would leave them training and writing. Ask Linux for SIGTERM when the parent
    (the launcher) dies: every rank then stops at the same step, writes one checkpoint and
    exits, as on a SIGTERM sent to the job. Elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher was gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def use_device(device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> Group:
    """The group the ranks compute in on ``device``: NCCL on CUDA, gloo on the CPU, whose
    collectives give up after ``timeout`` seconds (a rank that died or hangs makes the
    others fail within that time). On the CPU each rank gets cores / (ranks on this
    machine) threads, unless OMP_NUM_THREADS is set (torchrun sets it to 1 by default)."""
    global _current
    if _current.active:
        if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // _current.local_world_size))
        backend = "nccl" if device.type == "cuda" else "gloo"
        group = dist.new_group(list(range(_current.world_size)), timeout=timedelta(seconds=timeout), backend=backend)
        _current = Group(_current.rank, _current.world_size, _current.local_rank, _current.local_world_size, group)
    return _current


def on_main(action: Callable[[], object]) -> None:
    """Run ``action`` on rank 0 alone (e.g. preparing the run directory); a UserError it
    raises is raised on every rank, so all stop alike."""
    def run() -> str:
        action()
        return ""
    broadcast_text(run)


def shutdown() -> None:
    global _current
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


def broadcast_text(text_or_error: Callable[[], str]) -> str:
    """Rank 0 computes the text (e.g. the resolved spec) and every rank receives it, so
    the ranks cannot disagree. A UserError on rank 0 is raised on every rank."""
    group = current()
    if not group.active:
        return text_or_error()
    payload = b""
    if group.is_main:
        try:
            payload = b"ok:" + text_or_error().encode()
        except UserError as exc:
            payload = b"error:" + exc.template.encode()
    device = group._device()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    data = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if group.is_main:
        data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(data, src=0)
    received = bytes(data.cpu().numpy().tobytes())
    kind, _, body = received.partition(b":")
    if kind == b"error":
        raise SharedError(body.decode())
    return body.decode()


def check_batch(batch_size: int, group: Group) -> None:
    if group.active and batch_size % group.world_size:
        raise SpecError(
            f"inference.schedule.batch_size = {batch_size} is not divisible by the {group.world_size} processes; "
            f"choose a multiple of {group.world_size} (every rank takes an equal slice of each global batch)"
        )


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of a rank's latent draws: the seed itself on rank 0 (the one-process
    stream), an independent stream per (seed, rank) on the others."""
    if rank == 0:
        return seed
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed * 1_000_003 + rank)).item())


def blockwise(n: int, block: int, group: Group, compute: Callable[[slice], dict[str, Tensor]], seed: int,
              example_dim: Optional[dict[str, int]] = None) -> dict[str, Tensor]:
    """Per-example results over n examples, in blocks of ``block`` examples.

    Block j is computed by rank j mod W with the global torch RNG seeded by (seed, j), so
    each example's draws, and so its results, are the same whatever W (one process
    included). ``compute(rows)`` returns tensors with the block's examples on dimension
    ``example_dim[name]`` (default 0). The pieces are placed into zeros and summed over
    ranks: every rank gets the whole, exactly (other ranks add zeros)."""
    example_dim = example_dim or {}
    full: dict[str, Tensor] = {}
    for j, start in enumerate(range(0, n, block)):
        if j % group.world_size != group.rank:
            continue
        rows = slice(start, min(start + block, n))
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(seed * 1_000_003 + j)
            pieces = compute(rows)
        for name, piece in pieces.items():
            dim = example_dim.get(name, 0)
            if name not in full:
                shape = list(piece.shape)
                shape[dim] = n
                full[name] = torch.zeros(shape, dtype=piece.dtype, device=piece.device)
            full[name].narrow(dim, rows.start, rows.stop - rows.start).copy_(piece)
    if group.active:
        # a rank with no block still takes part: the layout comes from rank 0, which has block 0
        layout = broadcast_layout({k: (tuple(v.shape), v.dtype) for k, v in full.items()} if group.is_main else {})
        for name, (shape, dtype) in layout.items():
            tensor = full.get(name, torch.zeros(shape, dtype=dtype))
            summed = group.all_reduce_sum(tensor.to(torch.uint8) if dtype == torch.bool else tensor)
            full[name] = summed.bool() if dtype == torch.bool else summed
    return full


def broadcast_layout(layout):
    """Rank 0's {name: (shape, dtype)} on every rank, as text (no pickles between ranks)."""
    def encode():
        return json.dumps({k: [list(s), str(d).replace("torch.", "")] for k, (s, d) in layout.items()})

    decoded = json.loads(broadcast_text(encode))
    return {k: (tuple(s), getattr(torch, d)) for k, (s, d) in decoded.items()}


def local_device(device: torch.device) -> torch.device:
    """``cuda`` means this rank's GPU, ``cuda:LOCAL_RANK``, under several processes."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _cuda_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
