"""Data sets decode to the right tensors; the device loader matches a plain DataLoader."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from genlab.data import (
    DeviceLoader,
    ImageData,
    ImageFiles,
    StreamLoader,
    digits,
    image_folder,
    mnist,
    mnist5k,
    photos,
)
from genlab.data.datasets import read_only, resize
from genlab.errors import DataUnavailableError
from genlab.images import tiles


def test_mnist5k_is_5000_real_digits_held_out_by_class():
    train, test = mnist5k(), mnist5k(split="test")
    assert train.images.shape == (4500, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.num_classes == test.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [450] * 10
    assert torch.bincount(test.labels).tolist() == [50] * 10
    assert train.images.max() == 255 and train.images.float().mean() < 60  # dark background
    # no test image is a training image
    seen = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in seen for x in test.images)


def test_mnist5k_resized_for_dcgan_64():
    data = mnist5k(image_size=64)
    assert data.images.shape == (4500, 1, 64, 64) and data.image_size == 64


def test_digits_upsampled_and_split():
    train, test = digits(image_size=32), digits(split="test")
    assert train.images.shape == (1618, 1, 32, 32) and len(test) == 179
    assert train.num_classes == 10 and train.images.max() > 200
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        digits(split="val")


def test_resize_keeps_constant_images_constant():
    images = torch.full((3, 1, 8, 8), 200, dtype=torch.uint8)
    out = resize(images, 20)
    assert out.shape == (3, 1, 20, 20) and out.dtype == torch.uint8
    assert (out == 200).all()


def _write_images(folder, count, size, colour):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, colour).save(folder / f"{i}.png")


def test_image_folder_with_class_folders(tmp_path):
    _write_images(tmp_path / "cats", 3, (40, 30), (255, 0, 0))
    _write_images(tmp_path / "dogs", 2, (20, 20), (0, 0, 255))
    data = image_folder(str(tmp_path), image_size=16)
    assert data.images.shape == (5, 3, 16, 16)
    assert data.labels.tolist() == [0, 0, 0, 1, 1] and data.num_classes == 2
    assert data.images[0, 0].float().mean() > 250 and data.images[4, 2].float().mean() > 250


def test_image_folder_flat_and_grey(tmp_path):
    _write_images(tmp_path, 4, (10, 10), (255, 255, 255))
    (tmp_path / "notes.txt").write_text("not an image")
    data = image_folder(str(tmp_path), image_size=8, channels=1)
    assert data.images.shape == (4, 1, 8, 8) and data.labels is None and data.num_classes is None


def test_tiles_cover_an_image_flush_with_its_edges():
    image = torch.arange(24 * 40, dtype=torch.int32).view(1, 24, 40)
    cut = tiles(image, 16, 8)  # rows start at 0, 8; columns at 0, 8, 16, 24
    assert cut.shape == (8, 1, 16, 16)
    assert torch.equal(cut[5], image[:, 8:24, 8:24]) and torch.equal(cut[-1], image[:, 8:, 24:])
    assert tiles(image, 16, 16).shape == (6, 1, 16, 16)  # columns 0, 16 and the flush 24
    small = tiles(torch.full((3, 6, 12), 7, dtype=torch.uint8), 8, 8)  # enlarged to 8 x 16
    assert small.shape == (2, 3, 8, 8) and (small == 7).all()


def test_image_folder_patches_each_image_at_its_own_resolution(tmp_path):
    for i in range(10):
        Image.fromarray(np.full((24, 40), 25 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    train = image_folder(str(tmp_path), image_size=16, channels=1, patch_stride=8)
    test = image_folder(str(tmp_path), image_size=16, channels=1, patch_stride=8, split="test")
    assert train.images.shape == (9 * 8, 1, 16, 16) and test.images.shape == (6, 1, 16, 16)
    seen, held = ({int(t.unique()) for t in d.images} for d in (train, test))  # one level each
    assert len(seen) == 9 and len(held) == 1 and not seen & held
    with pytest.raises(ValueError, match="dataset.stream=true reads whole images"):
        image_folder(str(tmp_path), image_size=16, stream=True, patch_stride=8)


def test_photos_hold_out_the_middle_of_each_photograph():
    train, test = photos(), photos(split="test")
    assert train.images.shape == (1560, 3, 32, 32) and test.images.shape == (8, 3, 128, 128)
    assert train.labels is None and test.images.dtype == torch.uint8
    from sklearn.datasets import load_sample_images

    china = torch.from_numpy(load_sample_images().images[0].copy()).permute(2, 0, 1)
    assert torch.equal(test.images[0], china[:, :128, 256:384])  # the middle fifth
    assert torch.equal(test.images[3], china[:, -128:, 256:384])  # flush with the edge
    assert torch.equal(photos(split="test", test_size=32).images[1], china[:, :32, 288:320])
    assert torch.equal(train.images[0], china[:, :32, :32])
    seen = {t.numpy().tobytes() for t in train.images}
    assert not any(t.numpy().tobytes() in seen for t in test.images)
    with pytest.raises(ValueError, match="test_size=200 is larger"):
        photos(test_size=200, split="test")


def test_an_image_folder_skips_what_is_not_a_regular_file(tmp_path, caplog):
    """A FIFO named like an image would block the read forever: it is skipped with a warning."""
    _write_images(tmp_path, 4, (10, 10), (255, 255, 255))
    os.mkfifo(tmp_path / "x.png")
    data = image_folder(str(tmp_path), image_size=8, channels=1)
    assert data.images.shape == (4, 1, 8, 8)
    assert f"skipping 1 entries under {tmp_path} that are not regular files" in caplog.text
    assert str(tmp_path / "x.png") in caplog.text


def test_data_built_read_only_never_downloads_nor_writes(tmp_path, monkeypatch):
    """As for a data set config read from a run: the cache is read where there is one, never
    written, and torchvision's sets are never downloaded (no folder made at `root`)."""
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    with read_only():
        first = digits(image_size=8, split="test")
        with pytest.raises(DataUnavailableError, match="never downloaded"):
            mnist(root=str(tmp_path / "anywhere" / "data"), download=True)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "anywhere").exists()
    assert torch.equal(digits(image_size=8, split="test").images, first.images)
    cache = tmp_path / "cache" / "data" / "digits-test-8px.pt"
    assert cache.is_file()
    with read_only():
        assert torch.equal(digits(image_size=8, split="test").images, first.images)


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataUnavailableError, match="not a folder"):
        image_folder(str(tmp_path / "missing"))
    with pytest.raises(DataUnavailableError, match=str(tmp_path)):
        image_folder(str(tmp_path))


def test_torchvision_set_absent_offline_says_where_it_looked(tmp_path):
    with pytest.raises(DataUnavailableError, match=f"MNIST was not found under {tmp_path}"):
        mnist(root=str(tmp_path), download=False)


def _toy(n=10, labels=True):
    images = torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2)
    return ImageData("toy", images, torch.arange(n) % 3 if labels else None, 3 if labels else None)


def test_device_loader_matches_a_dataloader_over_the_same_permutation():
    data = _toy(10)
    loader = DeviceLoader(data, batch_size=3, device=torch.device("cpu"), seed=7)
    for epoch in range(2):
        order = loader.permutation(epoch).tolist()
        plain = DataLoader(
            TensorDataset(data.images, data.labels), batch_size=3, sampler=order, drop_last=True
        )
        for images, labels in plain:
            x, y = next(loader)
            assert torch.equal(x, images.float() / 127.5 - 1)
            assert torch.equal(y, labels)
    assert loader.epoch == 1


def test_device_loader_epochs_cover_each_image_once_and_differ():
    loader = DeviceLoader(_toy(9, labels=False), 3, torch.device("cpu"), seed=0)
    epochs = [torch.cat([next(loader)[0] for _ in range(3)]) for _ in range(2)]
    for batch in epochs:
        assert sorted(batch[:, 0, 0, 0].tolist()) == sorted(epochs[0][:, 0, 0, 0].tolist())
        assert len(set(batch[:, 0, 0, 0].tolist())) == 9
    assert not torch.equal(epochs[0], epochs[1])
    assert next(loader)[1] is None


def test_device_loader_state_restores_the_next_batch():
    a = DeviceLoader(_toy(10), 3, torch.device("cpu"), seed=1)
    for _ in range(4):
        next(a)
    b = DeviceLoader(_toy(10), 3, torch.device("cpu"), seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert torch.equal(next(a)[0], next(b)[0])


def test_device_loader_refuses_batches_larger_than_the_data():
    with pytest.raises(ValueError, match="larger than the data set"):
        DeviceLoader(_toy(4), 5, torch.device("cpu"))


def test_loader_batches_are_in_minus_one_one():
    data = ImageData("x", torch.tensor(np.array([0, 255], dtype=np.uint8)).view(2, 1, 1, 1))
    x, _ = next(DeviceLoader(data, 2, torch.device("cpu")))
    assert sorted(x.flatten().tolist()) == [-1.0, 1.0]


def test_decoded_sets_are_cached_as_uint8_tensors(tmp_path, caplog):
    from genlab.checkpoint import save_checkpoint
    from genlab.data.datasets import cached

    calls = []

    def make():
        calls.append(1)
        return _toy(6)

    def load():
        return cached(tmp_path, "toy-train-2px", make, channels=1, image_size=2, split="train")

    first, again = load(), load()
    assert len(calls) == 1 and (tmp_path / "toy-train-2px.pt").is_file()
    assert torch.equal(first.images, again.images) and again.images.dtype == torch.uint8
    assert torch.equal(first.labels, again.labels) and again.num_classes == 3
    (tmp_path / "toy-train-2px.pt").write_bytes(b"truncated")  # a broken cache is rebuilt
    assert torch.equal(load().images, first.images)
    assert len(calls) == 2
    # a cache holding other tensors than the data set's is rebuilt, not trained on
    wrong = {
        "bigger images": {**first.__dict__, "images": torch.zeros(6, 1, 3, 3, dtype=torch.uint8)},
        "float images": {**first.__dict__, "images": first.images.float()},
        "labels of another length": {**first.__dict__, "labels": first.labels[:2]},
        "another split": {**first.__dict__, "split": "test"},
    }
    for i, (what, state) in enumerate(wrong.items(), start=3):
        save_checkpoint(state, tmp_path / "toy-train-2px.pt")
        data = load()
        assert len(calls) == i, what
        assert torch.equal(data.images, first.images) and torch.equal(data.labels, first.labels)
    assert "rebuilding the data cache" in caplog.text


def test_a_decompression_bomb_is_refused_naming_its_file(tmp_path):
    """In memory and streamed by a DataLoader worker alike: one message with the file's name."""
    root = _random_folder(tmp_path / "images", per_class=10, size=(8, 8))
    bomb = root / "a" / "bomb.png"
    Image.new("L", (3000, 3000)).save(bomb)
    (split,) = [
        s for s in ("train", "test") if bomb in image_folder(str(root), split=s, stream=True).files
    ]
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # the bomb is 9,000x over (PIL refuses above 2x)
    try:
        with pytest.raises(DataUnavailableError, match=f"cannot read image {bomb}") as e:
            image_folder(str(root), image_size=8, stream=False, split=split)
        assert "Traceback" not in str(e.value)
        files = image_folder(str(root), image_size=8, stream=True, split=split)
        loader = StreamLoader(files, 1, torch.device("cpu"), num_workers=1)
        with pytest.raises(DataUnavailableError) as e:
            for _ in range(len(files)):
                next(loader)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    message = str(e.value)
    assert message.startswith(f"cannot read image {bomb}") and "Traceback" not in message


def _random_folder(root, classes=("a", "b"), per_class=10, size=(20, 24)):
    gen = torch.Generator().manual_seed(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (*size, 3), generator=gen, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / cls / f"{i}.png")
    return root


def test_streamed_folder_gives_the_in_memory_batches_and_resumes_exactly(tmp_path):
    """DataLoader workers reading files yield the same batches (values and labels) in the same
    seeded order as the device-resident loader, across epochs and after a resume mid-epoch."""
    root = str(_random_folder(tmp_path))
    held = image_folder(root, image_size=12, stream=False)
    files = image_folder(root, image_size=12, stream=True)
    assert isinstance(files, ImageFiles) and isinstance(held, ImageData)
    assert len(files) == len(held) == 18 and files.num_classes == 2
    device = torch.device("cpu")
    memory = DeviceLoader(held, 4, device, seed=3)
    stream = StreamLoader(files, 4, device, seed=3, num_workers=2)
    for _ in range(10):  # 4 batches per epoch: crosses two epoch boundaries
        (a, la), (b, lb) = next(memory), next(stream)
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(memory.examples(5), stream.examples(5))
    resumed = StreamLoader(files, 4, device, seed=3, num_workers=1)
    resumed.load_state_dict(stream.state_dict())
    for _ in range(3):
        assert torch.equal(next(resumed)[0], next(memory)[0])


def test_image_folder_streams_above_its_memory_limit(tmp_path):
    root = str(_random_folder(tmp_path, per_class=3))
    assert isinstance(image_folder(root, image_size=8), ImageData)
    assert isinstance(image_folder(root, image_size=8, memory_mb=0), ImageFiles)
    with pytest.raises(ValueError, match="stream must be true, false or auto"):
        image_folder(root, stream="sometimes")
