"""The autoregressive family: masks that make the likelihood exact, the likelihoods against hand
computations, and sampling by the inverse CDF."""

import contextlib
import math
from functools import partial

import pytest
import torch
from torch import nn

from genlab.losses import (
    ELBO,
    categorical_log_prob,
    from_levels,
    logistic_mixture_log_prob,
    to_levels,
)
from genlab.models.autoregressive import Autoregressive
from genlab.models.common import guided
from genlab.models.gated_pixelcnn import GatedPixelCNN
from genlab.models.pixelcnn import PixelCNN
from tests.conftest import TINY_NETWORKS, make_cfg


def tiny(
    channels=1,
    size=5,
    likelihood="softmax",
    classes=None,
    label_dropout=0.0,
    guidance=1.0,
    **network,
):
    torch.manual_seed(0)
    options = {"features": 3 * channels, "layers": 4, **network}
    return PixelCNN(
        partial(GatedPixelCNN, **options),
        sampler=Autoregressive(guidance),
        likelihood=likelihood,
        mixtures=2,
        conditional=classes is not None,
        label_dropout=label_dropout,
        channels=channels,
        image_size=size,
        num_classes=classes,
    )


def assert_inverse_cdf(cdf, levels, u):
    """Each value in `levels` (N,) is where `cdf` (N, 256) reaches `u` (N,)."""
    below = cdf.gather(1, (levels[:, None] - 1).clamp(min=0))[:, 0]
    below = torch.where(levels == 0, 0.0, below)
    at = cdf.gather(1, levels[:, None])[:, 0]
    assert ((below <= u + 1e-6) & (u <= at + 1e-6)).all()


def dependencies(f, channels: int, size: int) -> torch.Tensor:
    """d[c, i, j, c2, i2, j2]: whether output (c, i, j) of `f` (N, C, H, W) -> (N, C, H, W) has
    a nonzero gradient with respect to input (c2, i2, j2)."""
    x = torch.randn(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    out = f(x)
    d = torch.zeros(channels, size, size, channels, size, size, dtype=torch.bool)
    for c in range(channels):
        for i in range(size):
            for j in range(size):
                (grad,) = torch.autograd.grad(out[0, c, i, j], x, retain_graph=True)
                d[c, i, j] = grad[0] != 0
    return d


def raster_order(channels: int, size: int, strict_pixel: bool) -> torch.Tensor:
    """allowed[c, i, j, c2, i2, j2]: input (c2, i2, j2) comes before output (c, i, j) in raster
    order, channels in order within a pixel (`strict_pixel`: earlier channels only)."""
    c, i, j = torch.meshgrid(*[torch.arange(n) for n in (channels, size, size)], indexing="ij")
    pixel, pixel2 = (i * size + j)[..., None, None, None], (i * size + j)[None, None, None]
    c, c2 = c[..., None, None, None], c[None, None, None]
    same = pixel == pixel2
    return (pixel2 < pixel) | (same & ((c2 < c) if strict_pixel else (c2 <= c)))


@pytest.mark.parametrize(("channels", "label_map"), [(1, 0), (3, 0), (1, 2), (3, 2)])
def test_each_output_sees_exactly_the_sub_pixels_before_it(channels, label_map):
    """The receptive-field test: output (c, i, j) depends on every sub-pixel before it in
    raster order (R, G, B within a pixel) and on none at or after it. Every allowed input
    counts too: the gated stacks leave no blind spot. Class maps change none of it."""
    classes = 2 if label_map else None
    size, net = 5, tiny(channels, classes=classes, label_map=label_map).network.double()
    for p in net.parameters():  # no zero weights hide a dependency, no saturated gate
        nn.init.uniform_(p, 0.01, 0.05)
    labels = torch.tensor([1]) if label_map else None
    d = dependencies(lambda x: net(x, labels)[:, 0], channels, size)  # output parameter 0 of each
    assert torch.equal(d, raster_order(channels, size, strict_pixel=True))


@pytest.mark.parametrize("channels", [1, 3])
def test_each_stack_of_the_first_layer_keeps_its_side(channels):
    """Type-A first layer: the vertical stack sees only rows above; the horizontal stack only
    pixels to the left and the same pixel's earlier channels (groups of features per channel)."""
    size, net = 5, tiny(channels, first_kernel=3).network.double()
    for p in net.parameters():
        nn.init.uniform_(p, 0.01, 0.05)
    per_group = net.vertical.out_channels // channels

    def by_group(stack):  # one feature of each channel's group
        return lambda x: stack(x)[:, ::per_group]

    above = dependencies(by_group(net.vertical), channels, size)
    i = torch.arange(size)
    rows = (i[None, :, None, None, None, None] - 1 <= i[None, None, None, None, :, None]) & (
        i[None, None, None, None, :, None] < i[None, :, None, None, None, None]
    )  # the row above within a 3 x 3 kernel, every column within reach
    j = torch.arange(size)
    near = (j[None, None, :, None, None, None] - j[None, None, None, None, None, :]).abs() <= 1
    assert torch.equal(above, (rows & near).expand_as(above))
    left = dependencies(by_group(net.horizontal), channels, size)
    same_row = i[None, :, None, None, None, None] == i[None, None, None, None, :, None]
    reach = (j[None, None, :, None, None, None] - j[None, None, None, None, None, :]).clamp(min=0)
    allowed = raster_order(channels, size, strict_pixel=True) & same_row & (reach <= 1)
    assert torch.equal(left, allowed)


def constant_model(likelihood: str, bias: torch.Tensor, size: int = 2) -> PixelCNN:
    """A PixelCNN whose output is `bias` at every sub-pixel (all weights zero)."""
    model = tiny(1, size, likelihood, layers=1)
    for p in model.network.parameters():
        nn.init.zeros_(p)
    model.network.out.bias.data.copy_(bias)
    return model


def test_the_softmax_likelihood_by_hand():
    bias = torch.linspace(-2, 3, 256)
    model = constant_model("softmax", bias)
    levels = torch.tensor([[0, 17], [128, 255]])
    x = from_levels(levels)[None, None]
    log_z = math.log(sum(math.exp(b) for b in bias.tolist()))
    by_hand = -sum(bias[v].item() - log_z for v in levels.flatten().tolist())
    assert model.nll(x, None).item() == pytest.approx(by_hand, rel=1e-5)
    out = model.likelihood(x, 0, 0)[0]
    assert out["nll"] == pytest.approx(by_hand, rel=1e-5)
    assert out["nll_bits_per_dim"] == pytest.approx(by_hand / (4 * math.log(2)), rel=1e-5)


def test_the_logistic_mixture_likelihood_by_hand():
    # one component kept (the other's logit -30), mean 0.1, scale e^-2 = 0.135
    bias = torch.tensor([0.0, -30.0, 0.1, 0.9, -2.0, 0.0])
    model = constant_model("logistic_mixture", bias)
    levels = torch.tensor([[0, 100], [140, 255]])
    x = from_levels(levels)[None, None]

    def sigmoid(t):
        return 1 / (1 + math.exp(-t))

    def mass(v):
        centre, s = v / 127.5 - 1, math.exp(-2.0)
        upper = 1.0 if v == 255 else sigmoid((centre + 1 / 255 - 0.1) / s)
        lower = 0.0 if v == 0 else sigmoid((centre - 1 / 255 - 0.1) / s)
        return upper - lower

    by_hand = -sum(math.log(mass(v)) for v in levels.flatten().tolist())
    assert model.nll(x, None).item() == pytest.approx(by_hand, rel=1e-4)


@pytest.mark.parametrize("likelihood", ["softmax", "logistic_mixture"])
def test_each_sub_pixel_distribution_sums_to_one_and_matches_training(likelihood):
    """Over the 256 values, at any scale (log-scales from the floor -7 to 4); the values the
    sampler draws from are the ones training scores."""
    model = tiny(1, 3, likelihood)
    out = torch.randn(6, model.network.outputs) * 3
    if likelihood == "logistic_mixture":
        out[:, 4:] = torch.tensor([-9.0, -7.0, -3.0, 0.0, 2.0, 4.0])[:, None]
    log_p = model.value_log_probs(out.double())
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(6, dtype=torch.float64))
    levels = torch.tensor([0, 1, 127, 128, 254, 255])
    scored = model.log_prob(out[:, :, None, None, None].double(), levels[:, None, None, None])
    torch.testing.assert_close(scored.flatten(), log_p[torch.arange(6), levels])


def test_levels_round_trip():
    levels = torch.arange(256)
    assert torch.equal(to_levels(from_levels(levels)), levels)
    assert from_levels(levels)[[0, -1]].tolist() == [-1.0, 1.0]


def test_a_logistic_mixture_log_prob_is_finite_far_from_its_mean():
    params = torch.tensor([[0.0], [-0.9], [-7.0]])[None, :, :, None]  # one tight component
    levels = torch.tensor([[[0, 128, 255]]]).transpose(1, 2)
    log_p = logistic_mixture_log_prob(params.expand(1, 3, 3, 1), levels)
    assert torch.isfinite(log_p).all() and (log_p < 0).all()
    assert torch.isfinite(categorical_log_prob(torch.zeros(1, 256, 3, 1), levels)).all()


@pytest.mark.parametrize(("channels", "label_map"), [(1, 0), (3, 2)])
def test_the_sampler_s_pixel_by_pixel_pass_is_the_network_s_output(channels, label_map):
    """`row_links` at each row alone, then `column_output` at each pixel alone, with the rows
    and columns each keeps: the full network's output at every pixel, for any image (windows
    cut by the image's edges and not, class maps and colour included)."""
    net = tiny(channels, 9, classes=3, label_map=label_map).network
    if label_map:
        nn.init.normal_(net.class_maps.weight, 0, 1)
    x, labels = torch.rand(2, channels, 9, 9) * 2 - 1, torch.tensor([1, 2])
    with torch.no_grad():
        full = net(x, labels)
        rows = net.stack_rows(x)
        for i in range(9):
            links = net.row_links(x, labels, i, rows)
            inputs = net.column_inputs(links)
            for j in range(9):
                out = net.column_output(x[:, :, i], links, inputs, j)
                torch.testing.assert_close(out, full[..., i, j], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("label_map", [0, 2])
def test_samples_are_the_inverse_cdf_of_the_distributions_the_model_gives_them(label_map):
    """Each sampled sub-pixel is where the CDF of its distribution (given the image as finally
    drawn: the masks make the later values irrelevant) reaches Phi(z); the network saw only the
    rows done while sampling, which changes nothing, the class maps cut to them too. Same
    latents, same images."""
    model = tiny(3, 4, classes=3, label_map=label_map)
    if label_map:
        nn.init.normal_(model.network.class_maps.weight, 0, 1)
    labels = torch.tensor([0, 2])
    z = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(0))
    images = model.sample(z, labels)
    assert torch.equal(images, model.sample(z, labels))
    assert torch.equal(images, from_levels(to_levels(images)))
    with torch.no_grad():
        out = model.network(images, labels)
    u = torch.special.ndtr(z).view(images.shape)
    levels = to_levels(images)
    for c in range(3):
        for i in range(4):
            for j in range(4):
                cdf = model.value_log_probs(out[:, :, c, i, j]).exp().cumsum(1)
                assert_inverse_cdf(cdf, levels[:, c, i, j], u[:, c, i, j])


def with_classes(model):
    """`model` with random class biases and maps (the null label's rows stay zero)."""
    net, classes = model.network, model.num_classes
    for table in [layer.label for layer in net.layers] + [net.class_maps]:
        nn.init.normal_(table.weight.data[:classes], 0, 1)
    return model


@pytest.mark.parametrize("guidance", [0.0, 1.0, 2.5])
def test_guided_samples_follow_the_guided_distributions(guidance):
    """Classifier-free guidance (Ho & Salimans 2022) as LlamaGen guides its logits: each
    sub-pixel is where the CDF of softmax(u + guidance (c - u)) reaches Phi(z), c and u the
    log-probabilities the full network gives the image as drawn with its label and with the
    null label (guidance 1: the conditional model; 0: the unconditional one)."""
    model = with_classes(tiny(1, 4, classes=3, label_dropout=0.1, guidance=guidance, label_map=2))
    labels = torch.tensor([0, 2, 1])
    z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(0))
    images = model.sample(z, labels)
    with torch.no_grad():
        c = model.network(images, labels)[:, :, 0]
        u = model.network(images, torch.full_like(labels, 3))[:, :, 0]
    levels, phi = to_levels(images)[:, 0], torch.special.ndtr(z).view(3, 4, 4)
    for i in range(4):
        for j in range(4):
            log_p = [model.value_log_probs(out[:, :, i, j]) for out in (c, u)]
            cdf = torch.softmax(guided(*log_p, guidance), 1).cumsum(1)
            assert_inverse_cdf(cdf, levels[:, i, j], phi[:, i, j])
    assert model.sampling_protocol() == {"sampler": "autoregressive", "guidance": guidance}


def test_the_null_label_is_the_network_without_its_class_terms():
    """Label `num_classes` (trained by label dropout) adds no class bias and no class maps, and
    its zero rows never train; without label dropout there is no such row (runs from before
    it load as they were)."""
    model = with_classes(tiny(1, 4, classes=3, label_dropout=0.1, label_map=2))
    net, x = model.network, from_levels(torch.randint(0, 256, (2, 1, 4, 4)))
    null = torch.full((2,), 3)
    assert torch.equal(net(x, null), net(x, None))
    assert not torch.equal(net(x, null), net(x, torch.tensor([0, 1])))
    net(x, torch.tensor([3, 1])).square().mean().backward()
    for table in [layer.label for layer in net.layers] + [net.class_maps]:
        assert not table.weight.grad[3].any() and table.weight.grad[1].any()
    assert tiny(1, 4, classes=3).network.layers[0].label.num_embeddings == 3
    assert tiny(1, 4, classes=3, label_dropout=0.1).network.layers[0].label.num_embeddings == 4


class Update:
    """What `train_step` asks of the trainer's updater, without an optimizer."""

    def autocast(self):
        return contextlib.nullcontext()

    def __call__(self, value, role, measure=True):
        return torch.zeros(())


def test_label_dropout_gives_the_network_null_labels_and_none_draws_nothing():
    labels = torch.arange(400) % 3
    x = from_levels(torch.randint(0, 256, (400, 1, 4, 4)))
    for dropout in (0.25, 0.0):
        model, seen = tiny(1, 4, classes=3, label_dropout=dropout), []

        def network(x, y, net=model.network, seen=seen):
            seen.append(y)
            return net(x, y)

        model._replicas["network"] = network
        before = torch.get_rng_state()
        model.train_step(iter([(x, labels)]), Update())
        dropped = seen[0] == 3
        assert torch.equal(seen[0][~dropped], labels[~dropped])
        if dropout:
            assert dropped.float().mean().item() == pytest.approx(dropout, abs=0.07)
        else:  # no null label and no random draw: such runs train as before label dropout
            assert not dropped.any() and torch.equal(torch.get_rng_state(), before)


def test_temperature_sharpens_towards_the_likeliest_value():
    bias = torch.zeros(256)
    bias[200] = 2.0
    model = constant_model("softmax", bias, size=4)
    z = torch.randn(64, model.latent_dim, generator=torch.Generator().manual_seed(0))
    at_1, cold = model.sample(z), model.sample(z, temperature=0.05)
    assert (to_levels(cold) == 200).all()
    share = (to_levels(at_1) == 200).float().mean().item()
    p = math.exp(2) / (255 + math.exp(2))  # the mode's probability at temperature 1
    assert share == pytest.approx(p, abs=0.03)


def test_completion_keeps_the_upper_half():
    model = tiny(1, 6)
    real = from_levels(torch.randint(0, 256, (3, 1, 6, 6)))
    z = torch.randn(3, model.latent_dim)
    done = model.complete(real, z, None)
    assert torch.equal(done[:, :, :3], real[:, :, :3])
    assert not torch.equal(done[:, :, 3:], real[:, :, 3:])


def test_a_conditional_model_scores_p_x_as_the_mean_over_classes():
    model = tiny(1, 3, classes=4)
    for layer in model.network.layers:
        nn.init.normal_(layer.label.weight, 0, 1)
    x = from_levels(torch.randint(0, 256, (2, 1, 3, 3)))
    per_class = torch.stack([model.nll(x, torch.full((2,), c)) for c in range(4)])
    by_hand = -(torch.logsumexp(-per_class, 0) - math.log(4)).mean().item()
    assert model.likelihood(x, 0, 0)[0]["nll"] == pytest.approx(by_hand, rel=1e-5)
    assert per_class.std(0).min() > 0  # the labels matter


def test_settings_are_checked():
    with pytest.raises(ValueError, match="likelihood must be softmax or logistic_mixture"):
        tiny(likelihood="gaussian")
    with pytest.raises(ValueError, match="features must be >= 3"):
        tiny(3, features=2)
    with pytest.raises(ValueError, match="kernel must be odd"):
        tiny(kernel=4)
    with pytest.raises(ValueError, match="label_map must be >= 0"):
        tiny(classes=2, label_map=-1)
    assert tiny(label_map=2).network.class_maps is None  # no classes, no class maps
    with pytest.raises(ValueError, match=r"label_dropout must be in \[0, 1\), got 1.0"):
        tiny(classes=2, label_dropout=1.0)
    for unguidable in ({"classes": 2}, {"label_dropout": 0.1}):
        with pytest.raises(ValueError, match="solver.guidance=2.0 needs a class-conditional"):
            tiny(guidance=2, **unguidable)


def test_class_maps_start_at_zero_and_give_each_class_a_bias_per_position():
    """Zero at first (the plain class bias); once learnt, the same label biases the gates
    differently at different pixels, which a class bias alone cannot."""
    model = tiny(1, 4, classes=2, label_map=2)
    net, labels = model.network, torch.tensor([0, 1])
    x = from_levels(torch.randint(0, 256, (2, 1, 4, 4)))
    assert not net.class_maps.weight.any()
    plain = net(x, labels)
    nn.init.normal_(net.class_maps.weight, 0, 1)
    assert not torch.allclose(net(x, labels), plain)
    layer = net.layers[0]
    bias = layer.bias(labels, net.maps(labels, 0, 4, 4))
    assert bias.shape == (2, 2 * layer.residual.out_channels, 4, 4)
    assert not torch.allclose(bias[:, :, 0, 0], bias[:, :, 3, 3])
    assert torch.equal(net.maps(labels, 1, 2, 3), net.maps(labels, 0, 4, 4)[:, :, 1:3, :3])


def test_genlab_sample_completes_held_out_digits_of_their_own_class_at_a_temperature():
    """`sampler.mode=complete`: rows of held-out images, each above the same images with a
    new lower half; a conditional model completes them given their true classes.
    `sampler.temperature` needs a family that has one and reaches its sampling."""
    from genlab.data import digits
    from genlab.models import VAE
    from genlab.sampling import Sampler

    model = tiny(1, 8, classes=10)
    data = digits(image_size=8, split="test")
    sampler = Sampler(mode="complete", num_images=8, seed=0, temperature=0.8)
    sampler.check(model)
    seen = []

    def complete(real, z, labels, temperature=1.0):
        seen.append((labels, temperature))
        return PixelCNN.complete(model, real, z, labels, temperature)

    model.complete = complete
    batches, nrow = sampler(model, torch.device("cpu"), lambda: data)
    grid = torch.cat(list(batches))
    assert nrow == 3 and grid.shape == (6, 1, 8, 8)  # one row of 3 real, one of completions
    real, done = grid[:3], grid[3:]
    assert torch.equal(done[:, :, :4], real[:, :, :4])
    picked = torch.linspace(0, len(data.images) - 1, 3).long()
    assert torch.equal(seen[0][0], data.labels[picked]) and seen[0][1] == 0.8
    cold = Sampler(num_images=4, temperature=0.8)
    images = torch.cat(list(cold(model, torch.device("cpu"), None)[0]))
    warm = torch.cat(list(Sampler(num_images=4)(model, torch.device("cpu"), None)[0]))
    assert images.shape == warm.shape and not torch.equal(images, warm)
    vae = VAE(
        lambda **k: nn.Identity(), lambda **k: nn.Identity(), ELBO(), channels=1, image_size=8
    )
    with pytest.raises(ValueError, match="sampler.temperature needs a model that samples at a"):
        cold.check(vae)


def test_genlab_eval_and_sample_guide_a_conditional_pixelcnn(tmp_path):
    """`solver.guidance` on the eval and sample command lines reaches a PixelCNN run's sampling:
    named in the protocol and the eval file; a diffusion solver is refused in one message."""
    from PIL import Image

    from genlab.commands.eval import evaluate
    from genlab.commands.sample import sample
    from genlab.commands.train import train
    from genlab.errors import ConfigError

    run = tmp_path / "run"
    tiny_run = ["model=pixelcnn", "model.conditional=true", *TINY_NETWORKS["pixelcnn"]]
    train(make_cfg(*tiny_run, "dataset=digits", "trainer=smoke", "logger=none"), run_dir=run)
    own = ["evaluator.num_generated=20", "evaluator.kid_subset_size=10", "tensorboard=false"]
    own += ["evaluator.classifier_steps=20"]
    report = evaluate(make_cfg(f"run={run}", "+solver.guidance=3", *own, config_name="eval"))
    assert report.protocol["sampler"] == "autoregressive" and report.protocol["guidance"] == 3
    assert [p.name for p in (run / "eval").iterdir()] == ["classifier-12px_n20_g3_step0000005.json"]
    sampled = ["sampler.label=5", "sampler.num_images=4", "sampler.temperature=0.9"]
    out = sample(make_cfg(f"run={run}", "+solver.guidance=0", *sampled, config_name="sample"))
    assert out == run / "samples" / "samples_g0_label5_temp0.9_seed0.png"  # the grid's settings
    assert Image.open(out).size[0] > 12
    with pytest.raises(
        ConfigError,
        match=r"solver \(genlab.models.solvers.DDIM\) does not fit genlab.models.PixelCNN; it "
        "takes solver=autoregressive",
    ):
        evaluate(make_cfg(f"run={run}", "solver=ddim", *own, config_name="eval"))
