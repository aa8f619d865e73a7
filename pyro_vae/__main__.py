"""``python -m pyro_vae``: the CLI, as torchrun launches it (``torchrun ... -m pyro_vae train``)."""

import sys

from .cli import main

sys.exit(main())
