"""What each command does end to end, one module per command: train to a run directory
and resume it (``train``), ``evaluate``, ``analyze``, ``compare``, ``sample`` and
``encode``. These read and write run directories (:mod:`pyro_vae.runs`) around the pure
computation of :mod:`pyro_vae.infer` and :mod:`pyro_vae.analysis`; the CLI is one call
into them per command.

Import each from its command's module (``from pyro_vae.workflows.train import train``): the
package imports none of them, so that a command loads only what it runs (``pyro-vae train``
needs neither ArviZ nor the comparison statistics; the CLI starts faster)."""
