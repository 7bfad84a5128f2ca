"""Objects that tests name in configs (`loss._target_=tests.helpers.NaNAt`)."""

from genlab.losses import NonSaturating, bce_g_loss
from genlab.models.dcgan import DCGANGenerator


class NaNAt(NonSaturating):
    """The standard GAN loss, except that the generator loss is NaN at the given steps."""

    def __init__(self, steps: list[int], **options: float) -> None:
        super().__init__(**options)  # the GAN loss keys (conf/gan_loss.yaml)
        self.steps, self.calls = set(steps), 0

    def g_loss(self, fake):
        self.calls += 1
        value = bce_g_loss(fake)
        return value * float("nan") if self.calls in self.steps else value


class NaNGenerator(DCGANGenerator):
    """DCGAN's generator, whose images are NaN at the given training calls: the discriminator's
    BatchNorm statistics see them before either loss does."""

    def __init__(self, *args, nan_at: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_at, self.calls = set(nan_at), 0

    def forward(self, z, labels=None):
        x = super().forward(z, labels)
        if self.training:
            self.calls += 1
            if self.calls in self.nan_at:
                x = x * float("nan")
        return x
