"""What each command does end to end, one module per command: train to a run directory
and resume it (``train``), ``evaluate``, ``analyze``, ``compare``, ``sample`` and
``encode``. These read and write run directories (:mod:`pyro_vae.runs`) around the pure
computation of :mod:`pyro_vae.infer` and :mod:`pyro_vae.analysis`; the CLI is one call
into them per command."""

from .analyze import analyze_run
from .compare import compare
from .encode import encode_run
from .evaluate import evaluate_run
from .sample import sample_run
from .train import resume, train

__all__ = ["analyze_run", "compare", "encode_run", "evaluate_run", "resume", "sample_run", "train"]
