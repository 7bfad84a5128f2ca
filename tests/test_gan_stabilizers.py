"""GAN stabilizers: lazy R1 / R2, LeCam's moving averages, spectral norm, top-k training."""

import pytest
import torch

from genlab.config import build
from genlab.data import DeviceLoader, digits
from genlab.errors import ConfigError
from genlab.losses import Hinge, top_k
from genlab.optim import Updater
from tests.conftest import make_cfg

CPU = torch.device("cpu")


def gan_on_digits(lr: float) -> tuple[torch.nn.Module, dict, Updater, DeviceLoader]:
    """model=gan for digits, SGD at `lr` for both networks, and a loader of 16 digits."""
    cfg = make_cfg("model=gan", "dataset=digits")
    model = build(cfg.model, "model", channels=1, image_size=32, num_classes=10)
    sgd = {
        name: torch.optim.SGD(net.parameters(), lr=lr)
        for name, net in (("g", model.generator), ("d", model.discriminator))
    }
    return model, sgd, Updater(sgd, CPU), DeviceLoader(digits(), 16, CPU)


def steps(loss: Hinge, n: int, epoch: int = 0) -> tuple[list[dict], torch.nn.Module]:
    """`n` steps of model=gan on digits at learning rate 0 (the networks never change), with the
    same batches and noise for any loss settings."""
    torch.manual_seed(0)
    model, _, update, loader = gan_on_digits(lr=0.0)
    model.objective = loss
    loader.epoch = epoch  # what top-k's schedule reads
    torch.manual_seed(1)
    out = [{k: float(v) for k, v in model.train_step(loader, update).items()} for _ in range(n)]
    return out, model


def test_lazy_r1_and_r2_run_every_k_steps_scaled_by_k():
    plain, _ = steps(Hinge(), 3)
    lazy, _ = steps(Hinge(r1=2.0, r2=0.5, reg_every=2), 3)
    assert ["loss/r1" in v for v in lazy] == [True, False, True]
    assert ["loss/r2" in v for v in lazy] == [True, False, True]
    for p, v in zip(plain, lazy, strict=True):
        extra = 2.0 / 2 * 2 * v.get("loss/r1", 0) + 0.5 / 2 * 2 * v.get("loss/r2", 0)
        assert v["loss/d"] == pytest.approx(p["loss/d"] + extra, rel=1e-5)
    assert lazy[0]["loss/r1"] > 0 and lazy[2]["loss/r2"] > 0


def test_lecam_averages_d_outputs_and_adds_its_penalty():
    plain, _ = steps(Hinge(), 2)
    lecam, model = steps(Hinge(lecam=0.5, lecam_decay=0.9), 2)
    # the averages start at 0: after two steps 0.1 * (0.9 * first + second) (lr 0: D is fixed)
    expected = [0.1 * (0.9 * lecam[0][k] + lecam[1][k]) for k in ("gan/D(x)", "gan/D(G(z))")]
    assert model.lecam_anchors.tolist() == pytest.approx(expected, rel=1e-5)
    for p, v in zip(plain, lecam, strict=True):
        assert v["loss/d"] == pytest.approx(p["loss/d"] + 0.5 * v["loss/lecam"], rel=1e-5)


def test_r1_needs_a_discriminator_without_batchnorm():
    cfg = make_cfg("model=dcgan", "loss=hinge", "loss.r1=10")
    with pytest.raises(ConfigError, match="loss.r1.*without BatchNorm"):
        build(cfg.model, "model", channels=1, image_size=32, num_classes=None)


def test_spectral_norm_makes_every_weight_of_largest_singular_value_one():
    cfg = make_cfg("model=dcgan", "model.spectral_norm=[generator,discriminator]")
    model = build(cfg.model, "model", channels=1, image_size=32, num_classes=None)
    x, z = torch.randn(8, 1, 32, 32), torch.randn(8, 100)
    with torch.no_grad():  # raw weights far from a unit spectral norm
        for m in model.modules():
            if hasattr(m, "parametrizations"):
                m.parametrizations.weight.original.mul_(10.0)
    for _ in range(100):  # each training forward pass runs one power iteration
        model.discriminator(x)
        model.generator(z)
    normalized = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    assert len(normalized) == 8  # 4 transposed convolutions in G, 4 convolutions in D
    for name, m in normalized:
        out_dim = 1 if isinstance(m, torch.nn.ConvTranspose2d) else 0
        w = m.weight.detach().transpose(0, out_dim).flatten(1)
        raw = m.parametrizations.weight.original.detach().transpose(0, out_dim).flatten(1)
        sigma = torch.linalg.matrix_norm(w, ord=2)
        assert sigma == pytest.approx(1.0, abs=0.02), name
        assert torch.linalg.matrix_norm(raw, ord=2) > 1.5, name


def test_spectral_norm_names_networks():
    cfg = make_cfg("model=gan", "model.spectral_norm=[critic]")
    with pytest.raises(Exception, match="spectral_norm: 'critic' is not a network.*discriminator"):
        build(cfg.model, "model", channels=1, image_size=32, num_classes=None)


def test_top_k_keeps_the_highest_scores_on_a_decaying_share():
    scores = torch.tensor([0.1, 3.0, -2.0, 1.0])
    assert top_k(scores, 0.5).tolist() == [3.0, 1.0]
    assert top_k(scores, 0.1).tolist() == [3.0]  # at least one
    assert torch.equal(top_k(scores, 1.0), scores)
    loss = Hinge(top_k_min=0.5, top_k_decay=0.9)
    assert [loss.top_k_fraction(e) for e in (0, 1, 2, 100)] == pytest.approx([1, 0.9, 0.81, 0.5])


def test_top_k_trains_the_generator_on_its_best_samples():
    plain, _ = steps(Hinge(), 1, epoch=50)
    best, _ = steps(Hinge(top_k_min=0.5), 1, epoch=50)  # 0.99^50 = 0.6 of the batch
    assert best[0]["loss/d"] == plain[0]["loss/d"]  # the discriminator's step is unchanged
    assert best[0]["loss/g"] < plain[0]["loss/g"]  # hinge: -mean of the highest 60% of scores


def test_n_critic_discriminator_updates_on_fresh_batches_per_generator_update():
    """loss.n_critic=3 with a non-Wasserstein loss (SNGAN trains its D 5 times per G step)."""
    loss = build(make_cfg("loss=hinge", "loss.n_critic=3").model.objective, "loss")
    model, optimizers, update, loader = gan_on_digits(lr=0.01)
    model.objective = loss
    d_steps = []
    optimizers["d"].register_step_post_hook(lambda *_: d_steps.append(loader.index))
    model.train_step(loader, update)
    assert loss.n_critic == 3 and model.batches_per_step() == 3
    assert len(d_steps) == 3 and len(set(d_steps)) == 3  # each update after a batch of its own
    assert int(model.generator_updates) == 1


def test_projection_discriminator_adds_the_label_embedding_times_the_features():
    from genlab.models.resnet import ResNetDiscriminator

    torch.manual_seed(0)
    d = ResNetDiscriminator(1, 28, num_classes=10, features=16).eval()
    x = torch.randn(4, 1, 28, 28)
    h = torch.relu(d.blocks(x)).sum(dim=(2, 3))
    for y in (torch.tensor([0, 1, 2, 3]), torch.tensor([9, 9, 9, 9])):
        expected = d.output(h).squeeze(1) + (d.projection.weight.T[y] * h).sum(1)
        assert torch.allclose(d(x, y), expected, atol=1e-5)
    a, b = torch.zeros(4, dtype=torch.long), torch.full((4,), 7)
    change = ((d.projection.weight[:, 7] - d.projection.weight[:, 0]) * h).sum(1)
    assert torch.allclose(d(x, b) - d(x, a), change, atol=1e-5) and change.abs().min() > 0
    with pytest.raises(ValueError, match="labels"):
        d(x)


def test_spectral_norm_covers_the_projection_discriminators_class_embedding():
    cfg = make_cfg("model=sngan_projection", "model.discriminator.features=16")
    model = build(cfg.model, "model", channels=1, image_size=28, num_classes=10)
    d = model.discriminator
    with torch.no_grad():
        d.projection.parametrizations.weight.original.mul_(10.0)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    for _ in range(100):
        d(x, y)
    sigma = torch.linalg.matrix_norm(d.projection.weight.detach(), ord=2)
    assert sigma == pytest.approx(1.0, abs=0.02)


def test_conditional_batchnorm_scales_and_shifts_per_class():
    from genlab.models.resnet import ResNetGenerator

    torch.manual_seed(0)
    g = ResNetGenerator(8, 1, 28, num_classes=10, features=16).eval()
    z = torch.randn(1, 8).expand(10, 8)
    labels = torch.arange(10)
    out = g(z, labels)
    # scale 1, shift 0 for every class at first (up to the rounding of threaded kernels)
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-5)
    with torch.no_grad():
        g.blocks[0].norm1.shift.weight[3] += 1.0
    changed = (g(z, labels) - out).flatten(1).abs().amax(1) > 1e-4
    assert changed.tolist() == [c == 3 for c in range(10)]


def test_resnet_generator_joins_a_label_embedding_to_the_latent_when_asked():
    from genlab.models.resnet import ResNetGenerator

    torch.manual_seed(0)
    g = ResNetGenerator(8, 1, 28, num_classes=10, features=16, embed_dim=4).eval()
    z, y = torch.randn(2, 8), torch.tensor([0, 7])
    assert g.input.in_features == 8 + 4
    seen = []
    g.input.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    g(z, y)
    assert torch.equal(seen[0], torch.cat([z, g.embed.weight[y]], dim=1))
    # the class-conditional BatchNorm is still the same for every class at first, so the labels
    # reach the image through the embedding alone
    assert not torch.allclose(g(z, y), g(z, torch.tensor([3, 3])), atol=1e-4)
    with pytest.raises(ValueError, match="labels"):
        g(z)
    assert ResNetGenerator(8, 1, 28, num_classes=10, features=16).embed is None  # SNGAN's own
    assert ResNetGenerator(8, 1, 28, features=16, embed_dim=4).embed is None  # no classes


def test_resnet_networks_name_themselves_for_a_wrong_size():
    from genlab.models.resnet import ResNetGenerator

    with pytest.raises(ValueError, match="The ResNet generator cannot work at image_size=30"):
        ResNetGenerator(8, 1, 30)


def test_a_checkpoint_from_before_lecam_loads():
    cfg = make_cfg("model=gan")
    model = build(cfg.model, "model", channels=1, image_size=32, num_classes=None)
    old = {k: v for k, v in model.state_dict().items() if k != "lecam_anchors"}
    model.lecam_anchors.fill_(3.0)
    model.load_state_dict(old)  # strict: every other key must still match
    assert model.lecam_anchors.tolist() == [0.0, 0.0]


def test_minibatch_std_appends_the_groups_standard_deviation_by_hand():
    from genlab.models.common import MinibatchStd

    # 4 images of 1 channel, 1x2 pixels, in groups of 2: images 0 and 2, 1 and 3 (as StyleGAN2)
    x = torch.tensor([[[[0.0, 2.0]]], [[[1.0, 1.0]]], [[[2.0, 4.0]]], [[[1.0, 1.0]]]])
    out = MinibatchStd(2)(x)
    # group {0, 2}: per-pixel population variances 1 and 1; group {1, 3}: identical images, 0;
    # the std is sqrt(variance + 1e-8) averaged over the pixels
    expected = (torch.tensor([1.0, 0.0, 1.0, 0.0]) + 1e-8).sqrt()
    assert out.shape == (4, 2, 1, 2)
    torch.testing.assert_close(out[:, 1, 0, 0], expected)
    torch.testing.assert_close(out[:, 1, 0, 1], expected)
    torch.testing.assert_close(out[:, :1], x)
    # a batch of 6 does not divide by 4: groups of gcd(4, 6) = 2
    assert MinibatchStd(4)(torch.randn(6, 3, 2, 2)).shape == (6, 4, 2, 2)


def test_dcgan_discriminator_with_minibatch_std_sees_the_batchs_variety():
    from genlab.models.dcgan import DCGANDiscriminator

    torch.manual_seed(0)
    d = DCGANDiscriminator(1, 32, features=8, norm="none", minibatch_std=4).eval()
    same = torch.randn(1, 1, 32, 32).expand(8, -1, -1, -1)
    varied = torch.cat([same[:1], torch.randn(7, 1, 32, 32)])
    # the first image's logit depends on what else is in its batch, only through the std map
    assert not torch.allclose(d(same)[0], d(varied)[0])
    plain = DCGANDiscriminator(1, 32, features=8, norm="none").eval()
    torch.testing.assert_close(plain(same)[0], plain(varied)[0])
    with pytest.raises(ValueError, match="minibatch_std must be >= 0"):
        DCGANDiscriminator(1, 32, minibatch_std=-1)
