"""pyro-vae: variational autoencoders the Pyro way.

The model p(z) p(x|z) and the guide q(z|x) are Pyro functions of a :class:`VAE` built
from a declarative spec; training maximizes the ELBO with ``SVI``.
"""

from .errors import DataError, RunError, SpecError, UserError
from .model import VAE, build_vae
from .registry import trusting_code
from .runs import Run, load_run
from .spec import Spec, load_spec

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "DataError",
    "Run",
    "RunError",
    "Spec",
    "SpecError",
    "UserError",
    "build_vae",
    "load_run",
    "load_spec",
    "trusting_code",
]
