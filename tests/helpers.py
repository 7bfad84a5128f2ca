"""Objects that tests name in configs (`loss._target_=tests.helpers.NaNAt`)."""

from genlab.losses import NonSaturating, bce_g_loss


class NaNAt(NonSaturating):
    """The standard GAN loss, except that the generator loss is NaN at the given steps."""

    def __init__(self, steps: list[int], **options: float) -> None:
        super().__init__(**options)  # the GAN loss keys (conf/gan_loss.yaml)
        self.steps, self.calls = set(steps), 0

    def g_loss(self, fake):
        self.calls += 1
        value = bce_g_loss(fake)
        return value * float("nan") if self.calls in self.steps else value
