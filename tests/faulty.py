"""Components that fail on purpose, plugged in by import path (faulty:NaNAfter)."""

from pyro_vae.model.likelihoods import BernoulliLikelihood


class NaNAfter(BernoulliLikelihood):
    """Bernoulli whose logits turn NaN after ``after`` training steps."""

    def __init__(self, data_shape, *, after: int = 10):
        super().__init__(data_shape)
        self.after, self.calls = after, 0

    def forward(self, out):
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return super().forward(out)
