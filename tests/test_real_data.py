"""Real-data loaders and presets, on tiny fake datasets written in the real on-disk formats.

No real dataset is read here (no internet): CIFAR pickles, SVHN .mat, MNIST idx files, DTD /
Places365 / TinyImageNet JPEG folders and VOC XML annotations are written into tmp dirs.
"""
import json
import os
import pickle
import re

import pytest
import torch

from ood_core import data as D
from ood_core.data import real as R
from ood_core.cli import main
from ood_core.errors import DataError

from fake_datasets import N_TEST, N_TRAIN, VOC_OBJECTS, _jpegs, _pixels, write_all


@pytest.fixture()
def root(tmp_path, monkeypatch):
    r = write_all(tmp_path / "data")
    monkeypatch.setenv(R.DATA_ROOT_ENV, str(r))
    monkeypatch.delenv(R.DOWNLOAD_ENV, raising=False)
    return r


# --------------------------------------------------------------------------- loaders
def test_cifar_pickles(root):
    x, y, names = R.load_cifar("cifar10", train=True)
    assert x.shape == (5 * N_TRAIN, 3, 32, 32) and x.dtype == torch.uint8 and names[3] == "class3"
    assert torch.equal(x[:N_TRAIN], torch.from_numpy(_pixels(N_TRAIN, 3, 32, 32, seed=[False, 0])))
    assert y[:3].tolist() == [0, 1, 2] and y[N_TRAIN:N_TRAIN + 2].tolist() == [1, 2]
    x, y, names = R.load_cifar("cifar100", train=False)
    assert x.shape == (N_TEST, 3, 32, 32) and len(names) == 100 and y.tolist() == [1, 2, 3, 4, 5, 6]


def test_svhn_mat(root):
    x, y, _ = R.load_svhn(train=True)
    assert x.shape == (20, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(_pixels(20, 3, 32, 32, seed=5)))
    assert y[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # label 10 is digit 0


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_idx(root, name, folder):
    x, y, names = R.load_mnist(name, train=False)
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.uint8 and len(names) == 10
    assert torch.equal(x, torch.from_numpy(_pixels(12, 1, 28, 28, seed=7)))
    assert y.tolist() == [i % 10 for i in range(12)]


def test_image_sets_and_subset(root, monkeypatch):
    dtd = R.load_image_set("dtd", (32, 32))
    assert dtd.shape == (10, 3, 32, 32) and dtd.dtype == torch.uint8
    places = R.load_image_set("places365", (28, 28), channels=1)
    assert places.shape == (8, 1, 28, 28)
    monkeypatch.setenv("OOD_SET_SIZE", "4")
    a, b = R.load_image_set("dtd", (32, 32), seed=1), R.load_image_set("dtd", (32, 32), seed=1)
    assert a.shape[0] == 4 and torch.equal(a, b)


def test_image_folder(root):
    x, y, classes = R.load_image_folder(root / "dtd" / "dtd" / "images", (16, 16))
    assert x.shape == (10, 3, 16, 16) and classes == ["banded", "dotted"] and y.tolist() == [0] * 5 + [1] * 5


def test_imagefolder_benchmark(tmp_path, monkeypatch):
    monkeypatch.delenv(R.DATA_ROOT_ENV, raising=False)  # a path in the name: no data root needed
    for k in range(2):
        _jpegs(tmp_path / "imgs" / f"class{k}", 10, seed=k)
    bench = D.load_benchmark(f"imagefolder:{tmp_path / 'imgs'}")
    assert bench.input_shape == (3, 32, 32) and bench.class_names == ["class0", "class1"]
    assert (len(bench.train), len(bench.val), len(bench.test)) == (12, 4, 4)
    assert set(bench.ood_groups.values()) == {"far-synthetic"}
    again = D.load_benchmark_from_spec(bench.spec())
    assert torch.equal(again.test.x, bench.test.x)


def test_voc_multi_hot_from_xml(root):
    x, y, names = R.load_voc("2007", "trainval")
    assert x.shape == (8, 3, R.VOC_SIZE, R.VOC_SIZE) and y.shape == (8, 20) and y.dtype == torch.float32
    col = {c: i for i, c in enumerate(names)}
    for i in range(8):
        expected = torch.zeros(20)
        for o in VOC_OBJECTS[i % len(VOC_OBJECTS)]:
            expected[col[o]] = 1.0
        assert torch.equal(y[i], expected)
    assert y[2].sum() == 1  # two cats: one label


# --------------------------------------------------------------------------- presets
def test_cifar10_preset_builds_benchmark(root, caplog):
    bench = D.load_benchmark("cifar10", split_seed=1)
    assert bench.input_shape == (3, 32, 32) and bench.task == "multiclass" and bench.num_classes == 10
    assert len(bench.train) + len(bench.val) == 5 * N_TRAIN and len(bench.val) == 10 and len(bench.test) == N_TEST
    assert float(bench.train.x.max()) <= 1.0 and bench.train.x.dtype == torch.float32
    assert bench.ood_groups == {"cifar100": "near", "mnist": "far", "svhn": "far", "dtd": "far", "places365": "far"}
    for name, x in bench.ood.items():
        assert x.shape[1:] == (3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1, name
    assert "tinyimagenet" in caplog.text  # optional set: skipped with a note
    # rebuilt from checkpoint metadata (no root in the spec: it comes from the environment)
    again = D.load_benchmark_from_spec(bench.spec())
    assert torch.equal(again.train.x, bench.train.x) and torch.equal(again.ood["dtd"], bench.ood["dtd"])


def test_optional_set_used_when_present(root):
    _jpegs(root / "tiny-imagenet-200" / "val" / "images", 6, size=(64, 64))
    bench = D.load_benchmark("cifar100")
    assert bench.ood_groups["tinyimagenet"] == "near" and bench.ood["tinyimagenet"].shape == (6, 3, 32, 32)


def test_voc_and_mnist_presets(root):
    voc = D.load_benchmark("voc2007")
    assert voc.task == "multilabel" and voc.num_classes == 20 and voc.input_shape == (3, 64, 64)
    assert voc.test.y.shape == (4, 20) and voc.ood_groups == {"dtd": "far"} and voc.ood["dtd"].shape[1:] == (3, 64, 64)
    mn = D.load_benchmark("mnist")
    assert mn.input_shape == (1, 28, 28) and mn.ood_groups["fashionmnist"] == "near"
    assert mn.ood["cifar10"].shape == (N_TEST, 1, 28, 28)  # RGB -> grey, 32 -> 28


def test_known_must_be_all_classes(root):
    with pytest.raises(DataError, match="drop --known"):
        D.load_benchmark("svhn", known=(0, 1, 2))


# --------------------------------------------------------------------------- missing data
def test_missing_root_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv(R.DATA_ROOT_ENV, raising=False)
    with pytest.raises(DataError, match=r"--data-root DIR or set \$OOD_DATA_ROOT"):
        D.load_benchmark("cifar10")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist", "voc2007", "voc2012"])
def test_missing_files_one_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setenv(R.DATA_ROOT_ENV, str(tmp_path))
    monkeypatch.delenv(R.DOWNLOAD_ENV, raising=False)
    with pytest.raises(DataError) as err:
        D.load_benchmark(name)
    msg = str(err.value)
    assert R.LAYOUTS[name] in msg and "--download" in msg and str(tmp_path) in msg


def test_missing_ood_sets_are_skipped_and_named(root):
    import shutil

    shutil.rmtree(root / "val_256")
    bench = D.load_benchmark("svhn")
    assert set(bench.ood) == {"cifar10", "dtd"} and set(bench.missing_ood) == {"places365"}
    assert re.search("places365 not found.*val_256.*--download", bench.missing_ood["places365"])


def test_a_preset_with_only_its_id_dataset_builds(tmp_path, monkeypatch):
    from fake_datasets import write_cifar

    write_cifar(tmp_path)
    monkeypatch.setenv(R.DATA_ROOT_ENV, str(tmp_path))
    bench = D.load_benchmark("cifar10")
    assert bench.ood == {} and set(bench.missing_ood) == {"cifar100", "mnist", "svhn", "dtd", "places365"}


def test_embedded_datasets_need_no_root(monkeypatch):
    monkeypatch.delenv(R.DATA_ROOT_ENV, raising=False)
    assert D.load_benchmark("digits").input_shape == (1, 8, 8)


# --------------------------------------------------------------------------- CLI end to end
def test_cli_train_and_evaluate_on_fake_cifar10(root, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(R.DATA_ROOT_ENV)  # the CLI flag must be enough
    ckpt, report_path = tmp_path / "c10.pt", tmp_path / "r.json"
    assert main(["train", "--dataset", "cifar10", "--data-root", str(root), "--epochs", "1", "--arch", "smallcnn",
                 "--out", str(ckpt), "--quiet"]) == 0
    assert R.DATA_ROOT_ENV not in os.environ  # passed as an argument, not exported to the environment
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(root), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["dataset"] == "cifar10"
    assert set(report["ood"]) == {"cifar100", "mnist", "svhn", "dtd", "places365"}
    assert report["groups"]["cifar100"] == "near" and report["groups"]["dtd"] == "far"
    assert set(report["group_means"]) == {"near", "far"}
    for per_score in report["ood"].values():
        for m in per_score.values():
            assert 0.0 <= m["auroc"] <= 1.0
    assert "mean (far)" in capsys.readouterr().out


def test_train_and_load_from_spec_take_the_data_root(root, monkeypatch):
    """The data root is an argument of train() and load_benchmark_from_spec(), not only of the environment."""
    from ood_core.train import TrainConfig, train

    monkeypatch.delenv(R.DATA_ROOT_ENV)
    result = train("ce", "cifar10", TrainConfig(epochs=1, batch_size=64), model_params={"arch": "smallcnn"},
                   evaluate_after=False, data_root=root)
    bench = D.load_benchmark_from_spec(result.meta["dataset"], data_root=root)
    assert result.meta["dataset"]["name"] == bench.name == "cifar10"
    with pytest.raises(DataError, match="need a data root"):
        D.load_benchmark_from_spec(result.meta["dataset"])


def test_download_argument_overrides_the_environment(monkeypatch):
    from ood_core.paths import download_enabled

    monkeypatch.setenv(R.DOWNLOAD_ENV, "1")
    assert download_enabled() and download_enabled(None) and not download_enabled(False)
    monkeypatch.delenv(R.DOWNLOAD_ENV)
    assert not download_enabled() and download_enabled(True)


def test_cli_missing_data_is_one_line(tmp_path, capsys):
    rc = main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--epochs", "1",
               "--out", str(tmp_path / "x.pt"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cifar-10-batches-py" in err and "--download" in err


def test_cli_list_shows_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "voc2007" in out and "tinyimagenet?" in out and "cifar-100-python" in out


def test_crafted_cifar_pickle_is_refused_without_running_code(root, tmp_path):
    """CIFAR batches are pickles; one that references any callable other than numpy's array
    rebuilders is refused before it can run (the payload would create a file)."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f)
    with pytest.raises(DataError, match="refused"):
        R.load_cifar("cifar10", train=False, root=root)
    assert not marker.exists()


def test_train_and_evaluate_a_preset_with_only_its_id_dataset(tmp_path, monkeypatch, capsys):
    """`train --dataset cifar10` with only cifar-10-batches-py/ under the root trains, says which
    OOD sets are missing; `evaluate` scores the sets it finds and names the missing ones."""
    from fake_datasets import write_cifar, write_svhn

    write_cifar(tmp_path)
    out = tmp_path / "c10.pt"
    assert main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--epochs", "1", "--arch", "smallcnn",
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "not found on disk, so not scored: cifar100, mnist, svhn, dtd, places365" in printed
    write_svhn(tmp_path)  # one OOD set arrives
    report = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(out), "--data-root", str(tmp_path), "--json", str(report),
                 "--no-cache", "--device", "cpu"]) == 0
    rep = json.loads(report.read_text())
    assert list(rep["ood"]) == ["svhn"] and set(rep["missing_ood"]) == {"cifar100", "mnist", "dtd", "places365"}
    assert "not found on disk, so not scored: cifar100, mnist, dtd, places365" in capsys.readouterr().out
