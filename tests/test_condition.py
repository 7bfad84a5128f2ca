"""Image conditions: the degradations of the `condition` group checked by value, the paired
metrics against hand computations, the loader's pairs (and their exact resume), the refusals
of a condition that does not fit, and `genlab sample input=FOLDER` refusing a model that does
not generate from images."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import build_model
from genlab.data import DeviceLoader, ImageData
from genlab.data.degrade import Grey, Lowres, Mask, Noise, batch_stream, quantize
from genlab.data.loader import normalize
from genlab.errors import ConfigError
from genlab.metrics.paired import luma, paired_metrics
from tests.conftest import ROOT, cli, make_cfg

CPU = torch.device("cpu")
LEVEL = 1 / 127.5  # one 8-bit level in [-1, 1]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _uint8(seed: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=_gen(seed), dtype=torch.uint8)


def test_area_lowres_is_the_mean_of_each_block():
    x = torch.tensor([[0.0, 0.2, -1.0, 1.0], [0.4, 0.2, 1.0, 1.0]])[None, None]
    x = torch.cat([x, x.flip(-1)], dim=2)  # 4 x 4
    small = Lowres(scale=2, filter="area")(x, _gen())
    # blocks: (0 + .2 + .4 + .2) / 4 = .2 and (-1 + 1 + 1 + 1) / 4 = .5, mirrored below
    expected = torch.tensor([[[[0.2, 0.5], [0.5, 0.2]]]])
    assert small.shape == (1, 1, 2, 2)
    assert torch.allclose(small, quantize(expected))
    assert torch.allclose(small, expected, atol=LEVEL / 2)


def test_bicubic_lowres_matches_pil_within_one_level():
    images = _uint8(1, 3, 1, 32, 32)
    ours = Lowres(scale=4)(normalize(images), _gen())
    for image, small in zip(images, ours, strict=True):
        pil = Image.fromarray(image[0].numpy()).resize((8, 8), Image.Resampling.BICUBIC)
        theirs = normalize(torch.from_numpy(np.asarray(pil).copy()))
        assert (small[0] - theirs).abs().max() <= LEVEL + 1e-6


def test_blurred_lowres_spreads_a_point_by_the_gaussian_kernel():
    sigma, value = 0.8, 0.9
    x = torch.full((1, 1, 16, 16), -1.0)
    x[..., 8, 8] = value  # a point of height value + 1 above the -1 floor
    small = Lowres(scale=2, filter="area", blur=sigma)(x, _gen())
    g = [math.exp(-(d**2) / (2 * sigma**2)) for d in range(-3, 4)]  # kernel 2 * ceil(2.4) + 1
    g0, g1 = g[3] / sum(g), g[4] / sum(g)
    # block (4, 4) is pixels 8..9 x 8..9: the mean of the kernel's (0|1) x (0|1) corner
    assert math.isclose(
        float(small[0, 0, 4, 4]) + 1, (value + 1) * (g0 + g1) ** 2 / 4, abs_tol=LEVEL
    )
    mass = 4 * float(small.sum() + small.numel())  # each output pixel is a mean of 4
    assert math.isclose(mass, value + 1, rel_tol=0.02)  # the kernel keeps the mass
    assert Lowres(2, blur=0.8).protocol()["condition"] == "lowres x2 blur sigma 0.8 bicubic"


def test_noisy_lowres_adds_noise_of_sigma_levels_from_the_stream():
    x = torch.zeros(4, 3, 64, 64)
    clean = Lowres(scale=2)(x, _gen())
    noisy = Lowres(scale=2, noise=10)(x, _gen(3))
    assert math.isclose(float((noisy - clean).std()) * 127.5, 10, rel_tol=0.03)
    assert torch.equal(noisy, Lowres(scale=2, noise=10)(x, _gen(3)))  # only the stream draws
    assert not torch.equal(noisy, Lowres(scale=2, noise=10)(x, _gen(4)))
    assert Lowres(4, noise=30).protocol()["condition"] == "lowres x4 bicubic noise sigma 30/255"


def test_grey_is_bt601_luma_as_pil_converts():
    images = _uint8(2, 4, 3, 8, 8)
    ours = Grey()(normalize(images), _gen())
    assert ours.shape == (4, 1, 8, 8)
    for image, grey in zip(images, ours, strict=True):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")
        theirs = normalize(torch.from_numpy(np.asarray(pil).copy()))
        assert (grey[0] - theirs).abs().max() <= LEVEL + 1e-6
    red = torch.tensor([1.0, -1.0, -1.0])[None, :, None, None]  # (255, 0, 0): luma 0.299 * 255
    assert torch.allclose(Grey()(red, _gen()), quantize(torch.tensor(0.299 * 2 - 1)))


def test_noise_has_its_sigma_in_8_bit_levels_and_follows_its_stream():
    grey = torch.zeros(64, 1, 16, 16)  # mid-grey: no clamping
    noisy = Noise(sigma=25)(grey, _gen(3))
    assert torch.equal(noisy, Noise(sigma=25)(grey, _gen(3)))
    assert not torch.equal(noisy, Noise(sigma=25)(grey, _gen(4)))
    assert abs(float(noisy.std()) * 127.5 - 25) < 0.5
    levels = (noisy + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # as a PNG holds it


def test_a_centre_mask_holes_the_middle_and_marks_it():
    x = torch.full((2, 1, 8, 8), 0.5)
    masked = Mask(size=0.5)(x, _gen())
    assert masked.shape == (2, 2, 8, 8)
    hole = torch.zeros(8, 8, dtype=torch.bool)
    hole[2:6, 2:6] = True
    assert torch.equal(masked[:, 1] == -1, hole.expand(2, 8, 8))  # known 1, hole -1
    assert (masked[:, 1][:, ~hole] == 1).all()
    assert (masked[:, 0][:, hole] == 0).all()
    assert torch.allclose(masked[:, 0][:, ~hole], quantize(torch.tensor(0.5)))


def test_random_masks_move_with_their_stream_and_a_users_alpha_is_the_hole():
    x = torch.zeros(16, 3, 8, 8)
    a, b = Mask(0.25, "random")(x, _gen(0)), Mask(0.25, "random")(x, _gen(0))
    assert torch.equal(a, b)
    assert len({tuple(m[3].flatten().tolist()) for m in a}) > 1  # holes in several places
    assert ((a[:, 3] == -1).sum(dim=(1, 2)) == 4).all()  # 2 x 2 each
    rgba = torch.cat([_uint8(5, 16, 3, 8, 8), ((a[:, 3:] + 1) * 127.5).to(torch.uint8)], dim=1)
    prepared = Mask().prepare(rgba)
    assert torch.equal(prepared[:, 3], a[:, 3])
    assert (prepared[:, :3][a[:, :3] == 0] == 0).all()


def test_conditions_have_the_shapes_they_declare():
    x = torch.zeros(2, 3, 16, 16)
    for degrade in (Lowres(4), Lowres(2, "area", 1.0, 5.0), Mask(), Grey(), Noise()):
        assert degrade(x, _gen()).shape[1:] == degrade.shape(3, 16), degrade


def test_bad_degradation_settings_name_the_key():
    for make, key in [
        (lambda: Lowres(scale=1), "scale"),
        (lambda: Lowres(filter="nearest"), "filter"),
        (lambda: Lowres(blur=-1), "blur"),
        (lambda: Lowres(noise=-1), "noise"),
        (lambda: Mask(size=1.5), "size"),
        (lambda: Mask(where="left"), "where"),
        (lambda: Noise(sigma=0), "sigma"),
    ]:
        with pytest.raises(ValueError, match=key):
            make()
    with pytest.raises(ValueError, match="condition.scale=3 does not divide"):
        Lowres(scale=3).check(1, 28)
    with pytest.raises(ValueError, match="colour data set"):
        Grey().check(1, 28)


def test_psnr_and_ssim_against_hand_computations():
    target = torch.full((2, 1, 16, 16), 100, dtype=torch.uint8)
    off = target + 3  # every pixel 3 levels off: MSE (3/255)^2, PSNR 20 log10(255 / 3)
    measured = paired_metrics(off, target)
    assert math.isclose(measured["psnr"], 20 * math.log10(255 / 3), rel_tol=1e-6)
    assert paired_metrics(target, target)["ssim"] == pytest.approx(1.0)
    # only the border differs: cropped away, the outputs are the targets
    framed = target.clone()
    framed[..., :2, :] = 0
    assert math.isinf(paired_metrics(framed, target, border=2)["psnr"])
    assert paired_metrics(framed, target)["psnr"] < 30


def test_colour_images_are_measured_on_their_y_channel():
    rgb = torch.tensor([1.0, 0.5, 0.0])[None, :, None, None]
    # MATLAB's rgb2ycbcr: 16 + 65.481 R + 128.553 G + 24.966 B, over 255
    assert float(luma(rgb)) == pytest.approx((16 + 65.481 + 128.553 * 0.5) / 255)
    target = _uint8(6, 2, 3, 8, 8)
    swapped = target[:, [0, 2, 1]]  # another colour, the same luma only where G == B
    mse = (luma(swapped.double() / 255) - luma(target.double() / 255)).square().mean((1, 2, 3))
    per_image = -10 * mse.log10()  # the SR papers' mean over images of each one's PSNR
    assert paired_metrics(swapped, target)["psnr"] == pytest.approx(float(per_image.mean()))


def test_the_loader_pairs_each_batch_with_its_conditions_and_resumes_them():
    data = ImageData("toy", _uint8(7, 12, 1, 8, 8), torch.arange(12) % 3, 3, "train")
    noise = Noise(10)
    a = DeviceLoader(data, 4, CPU, seed=2, degrade=noise)
    batches = [next(a) for _ in range(5)]  # into the second epoch
    for i, (images, condition) in enumerate(batches):
        epoch, index = divmod(i, 3)
        assert torch.equal(condition, noise(images, batch_stream(2, epoch, index, CPU)))
    b = DeviceLoader(data, 4, CPU, seed=2, degrade=noise)
    for _ in range(2):
        next(b)
    state = b.state_dict()
    c = DeviceLoader(data, 4, CPU, seed=2, degrade=noise)
    c.load_state_dict(state)
    for expected in batches[2:]:
        got = next(c)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=dcgan", "condition=noise"], "GAN does not generate from an image"),
        (["model=vae", "condition=lowres"], "VAE does not generate from an image"),
    ],
)
def test_a_condition_that_does_not_fit_is_refused_naming_it(overrides, message):
    from genlab.data import mnist5k

    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=message):
        build_model(cfg, mnist5k(split="test"))


def test_sample_input_refuses_a_model_that_does_not_generate_from_images(tmp_path):
    run = ROOT / "tests" / "fixtures" / "runs_17b1089" / "cgan"
    (tmp_path / "in").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "in" / "a.png")
    out = cli("sample", f"run={run}", f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}")
    assert out.returncode == 1
    assert "generates from labels of 10 classes, not from images" in out.stderr
    assert not (tmp_path / "out").exists()
    empty = cli("sample", f"run={run}", f"input={tmp_path}")
    assert "give a folder of images" in empty.stderr


def test_a_condition_changes_what_a_checkpoint_means():
    from genlab.config import meaning_changes

    plain, noisy = make_cfg("model=dcgan"), make_cfg("model=dcgan", "condition=noise")
    assert meaning_changes(plain, noisy) == [
        "condition._target_: <absent> -> genlab.data.degrade.Noise",
        "condition.sigma: <absent> -> 25.0",
    ]
