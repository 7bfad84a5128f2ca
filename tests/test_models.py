"""Network shapes, DCGAN layouts, initialisation, conditioning."""

from functools import partial

import pytest
import torch
from torch import nn

from genlab.losses import ELBO, NonSaturating
from genlab.models import GAN, VAE
from genlab.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_layout
from genlab.models.mlp import MLPDecoder, MLPDiscriminator, MLPEncoder, MLPGenerator
from genlab.models.vae import ConvDecoder, ConvEncoder


@pytest.mark.parametrize(
    ("size", "layout"), [(16, (4, 2)), (28, (7, 2)), (32, (4, 3)), (64, (4, 4))]
)
def test_dcgan_layout(size, layout):
    assert dcgan_layout(size) == layout


@pytest.mark.parametrize("size", [8, 14, 30, 48])
def test_dcgan_layout_refuses_sizes_it_cannot_make(size):
    with pytest.raises(ValueError, match=f"image_size={size}"):
        dcgan_layout(size)


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (64, 3), (64, 1)])
def test_dcgan_shapes(size, channels):
    g = DCGANGenerator(latent_dim=10, channels=channels, image_size=size, features=8)
    d = DCGANDiscriminator(channels=channels, image_size=size, features=8)
    images = g(torch.randn(3, 10))
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1
    assert d(images).shape == (3,)


def test_dcgan_init_is_normal_002():
    g = DCGANGenerator(latent_dim=100, channels=1, image_size=64, features=64)
    conv = next(m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert conv.weight.mean().abs().item() < 1e-3


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_dcgan_discriminator_norms(norm):
    d = DCGANDiscriminator(channels=1, image_size=28, features=8, norm=norm)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert has_bn == (norm == "batch")
    assert d(torch.randn(2, 1, 28, 28)).shape == (2,)


def test_conditional_mlp_uses_labels():
    torch.manual_seed(0)
    g = MLPGenerator(latent_dim=8, channels=1, image_size=8, num_classes=3, hidden=(16,))
    d = MLPDiscriminator(channels=1, image_size=8, num_classes=3, hidden=(16,))
    z = torch.randn(2, 8)
    a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 1]))
    assert a.shape == (2, 1, 8, 8) and not torch.allclose(a, b)
    assert d(a, torch.tensor([0, 2])).shape == (2,)
    with pytest.raises(ValueError, match="labels"):
        g(z)


def test_conditional_dcgan_generator_joins_the_label_embedding_to_the_noise():
    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=6, channels=1, image_size=28, num_classes=3, features=8)
    z, y = torch.randn(2, 6), torch.tensor([0, 2])
    assert g.net[0].in_channels == 6 + 10
    by_hand = g.net(torch.cat([z, g.embed.weight[y]], dim=1)[:, :, None, None])
    assert torch.equal(g(z, y), by_hand)
    assert not torch.allclose(g(z, y), g(z, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="labels"):
        g(z)


def test_dcgan_projection_discriminator_adds_the_embedding_times_the_pooled_features():
    torch.manual_seed(0)
    d = DCGANDiscriminator(channels=1, image_size=28, num_classes=10, features=8).eval()
    x = torch.randn(4, 1, 28, 28)
    h = d.net[:-1](x)
    for y in (torch.tensor([0, 1, 2, 3]), torch.full((4,), 9)):
        expected = d.net[-1](h).flatten() + (d.projection.weight.T[y] * h.sum(dim=(2, 3))).sum(1)
        assert torch.allclose(d(x, y), expected, atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        d(x)


def test_gan_builds_networks_for_the_data_shape():
    gan = GAN(
        objective=NonSaturating(),
        generator=lambda **kw: MLPGenerator(hidden=(16,), **kw),
        discriminator=lambda **kw: MLPDiscriminator(hidden=(16,), **kw),
        latent_dim=4,
        conditional=True,
        channels=3,
        image_size=12,
        num_classes=5,
    )
    assert gan.num_classes == 5
    assert gan.generator(torch.randn(2, 4), torch.tensor([0, 4])).shape == (2, 3, 12, 12)


def test_cgan_without_labels_is_refused():
    with pytest.raises(ValueError, match="class labels"):
        GAN(
            MLPGenerator,
            MLPDiscriminator,
            NonSaturating(),
            conditional=True,
            channels=1,
            image_size=8,
        )


CONV = {"encoder": partial(ConvEncoder, features=8, hidden=32), "decoder": ConvDecoder}
MLP = {"encoder": partial(MLPEncoder, hidden=[64, 32]), "decoder": MLPDecoder}


@pytest.mark.parametrize("nets", [CONV, MLP], ids=["conv", "mlp"])
@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (64, 1)])
def test_vae_shapes(nets, size, channels):
    vae = VAE(**nets, objective=ELBO(), latent_dim=6, channels=channels, image_size=size)
    x = torch.rand(4, channels, size, size) * 2 - 1
    decoded, mu, logvar = vae(x)
    assert decoded.shape == x.shape
    assert mu.shape == logvar.shape == (4, 6)


def test_mlp_vae_is_pytorchs_example_network():
    """784-400-(20, 20) and 20-400-784: the parameter count of PyTorch's VAE example."""
    vae = VAE(MLPEncoder, MLPDecoder, ELBO(), latent_dim=20, channels=1, image_size=28)
    example = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert sum(p.numel() for p in vae.parameters()) == example


def test_conv_vae_refuses_sizes_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4, got 30 .model=vae_mlp takes any size"):
        VAE(ConvEncoder, ConvDecoder, ELBO(), channels=1, image_size=30)
    VAE(MLPEncoder, MLPDecoder, ELBO(), channels=1, image_size=30)


def test_ema_matches_torchs_averaged_model():
    """The sync-free EMA gives what torch's `AveragedModel` with `get_ema_multi_avg_fn` gives:
    nothing before `ema_start`, a copy of G at the first average, then decay * EMA + 0.1 * G
    (weights and BatchNorm statistics; its batch count is G's)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from genlab.config import build, build_model
    from genlab.data.loader import DeviceLoader
    from genlab.optim import Updater
    from tests.conftest import make_cfg

    cfg = make_cfg("model=dcgan", "dataset=digits", "model.ema_decay=0.9", "model.ema_start=2")
    data = build(cfg.dataset, "dataset")
    torch.manual_seed(0)
    net = build_model(cfg, data)
    cpu = torch.device("cpu")
    update = Updater(net.configure_optimizers(build(cfg.optimizer, "optimizer")), cpu)
    reference = AveragedModel(
        net.generator, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True
    )
    untouched = [t.clone() for t in net.generator_ema.module.state_dict().values()]
    loader = DeviceLoader(data, 16, cpu)
    for step in range(1, 6):
        net.train_step(loader, update, metrics=False)
        ema = net.generator_ema.module.state_dict()
        if step <= 2:
            assert all(torch.equal(a, b) for a, b in zip(ema.values(), untouched, strict=True))
            continue
        reference.update_parameters(net.generator)
        g = net.generator.state_dict()
        for key, value in reference.module.state_dict().items():
            if not value.is_floating_point():  # BatchNorm's batch count: G's
                assert torch.equal(ema[key], g[key]), key
            elif step == 3:
                assert torch.equal(ema[key], g[key]) and torch.equal(value, g[key]), key
            else:
                torch.testing.assert_close(ema[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert int(net.generator_ema.n_averaged) == int(reference.n_averaged) == 3
    assert not torch.equal(ema["net.0.weight"], net.generator.state_dict()["net.0.weight"])


def test_the_base_class_holds_the_order_of_construction():
    """A family's `__init__` starts with the base's (its shape) and ends with `finish`, or it is
    refused with the family's name."""

    class Unfinished(VAE):
        def __init__(self, **kw):
            super().__init__(MLPEncoder, MLPDecoder, ELBO(), **kw)
            self._finished = False  # as if `finish` had not run

    class Shapeless(VAE):
        def __init__(self, **kw):
            nn.Module.__init__(self)
            self.finish(None, ())

    with pytest.raises(TypeError, match=r"Unfinished.__init__ must end with self.finish"):
        Unfinished(channels=1, image_size=8)
    with pytest.raises(TypeError, match=r"Shapeless.__init__ must start with super\(\).__init__"):
        Shapeless(channels=1, image_size=8)
    VAE(MLPEncoder, MLPDecoder, ELBO(), channels=1, image_size=8)  # the family itself is whole
