"""A user OOD set can never stand in for a split the scores are fitted on (or a built-in set):
its name is checked against every name ``Benchmark.inputs`` uses, on the CLI, in the library,
in the feature cache and in the app's upload path."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import ood_core
from ood_core.cli import main
from ood_core.data import SPLIT_NAMES
from ood_core.errors import DataError
from ood_core.evaluate import evaluate, extract_benchmark_outputs
from ood_core.feature_cache import FeatureCache

from apptest_helpers import on_page
from conftest import CHECKPOINTS

TOY = str(CHECKPOINTS / "ce_toy2d.pt")


@pytest.fixture(scope="module")
def toy():
    model, meta = ood_core.load_checkpoint(TOY)
    return model, ood_core.load_benchmark("toy2d")


@pytest.mark.parametrize("name", ["train", "val", "id", "ring", "uniform-box"])
def test_cli_refuses_a_user_set_named_like_a_split_or_a_built_in_set(name, tmp_path, capsys):
    f = tmp_path / f"{name}.npy"
    np.save(f, np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    rc = main(["evaluate", "--checkpoint", TOY, "--ood", "ring", "--score-names", "knn,msp", "--ood-file", str(f),
               "--no-cache", "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and f"named {name!r}" in err and "rename the file" in err
    assert not (tmp_path / "r.json").exists()


def test_cli_knn_on_digits_is_not_changed_by_a_file_named_train(tmp_path, capsys):
    """The issue's case: 50 random images named train.npy used to replace the training split
    that knn is fitted on (AUROC on `unknown` 98.2 -> 21.6, exit 0)."""
    x = np.random.default_rng(0).random((50, 8, 8)).astype(np.float32)
    np.save(tmp_path / "train.npy", x)
    args = ["evaluate", "--checkpoint", str(CHECKPOINTS / "ce_digits.pt"), "--ood", "unknown",
            "--score-names", "knn,mahalanobis", "--no-cache"]
    assert main([*args, "--ood-file", str(tmp_path / "train.npy")]) == 2
    assert "'train'" in capsys.readouterr().err
    np.save(tmp_path / "scribbles.npy", x)  # the same data under a free name is scored as a user set
    assert main([*args, "--ood-file", str(tmp_path / "scribbles.npy"), "--json", str(tmp_path / "r.json")]) == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ood"]["unknown"]["knn"]["auroc"] > 0.9 and report["groups"]["scribbles"] == "user"


@pytest.mark.parametrize("name", sorted(SPLIT_NAMES))
def test_library_refuses_reserved_names_everywhere(name, toy):
    model, bench = toy
    x = torch.zeros(5, 2)
    with pytest.raises(DataError, match="rename the file"):
        evaluate(model, bench, score_names=["knn"], extra_ood={name: x})
    with pytest.raises(DataError, match="rename the file"):
        extract_benchmark_outputs(model, bench, [name], extra_ood={name: x})
    with pytest.raises(DataError, match="rename the file"):
        bench.inputs({name: x})


def test_feature_cache_never_stores_a_user_set_under_a_split_name(toy, tmp_path):
    model, bench = toy
    cache = FeatureCache(tmp_path / "features")
    with pytest.raises(DataError, match="'train'"):
        extract_benchmark_outputs(model, bench, ["id", "train"], extra_ood={"train": torch.zeros(5, 2)}, cache=cache)
    assert not list(cache.folder.rglob("*.npz"))  # nothing stored: not even the real `id` split
    outs = extract_benchmark_outputs(model, bench, ["train"], cache=cache)  # the real split, cached and read back
    again = extract_benchmark_outputs(model, bench, ["train"], cache=cache)
    assert outs["train"].features.shape[0] == len(bench.train) == again["train"].features.shape[0]


def test_app_refuses_an_upload_named_train(app, tmp_path):
    """The app's sidebar: an uploaded train.npy is explained and not used (the Models page's
    numbers stay those of the real training split)."""
    from ood_core import uploads
    from ood_core.app import state

    class Upload:
        name = "train.npy"

        def getvalue(self):
            buf = io.BytesIO()
            np.save(buf, np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8))
            return buf.getvalue()

    upload = uploads.save_upload([Upload()], tmp_path)
    at = app
    at.session_state[state.USER_OOD_KEY] = str(upload)
    on_page(at)
    assert not at.exception, [e.value for e in at.exception]
    assert any("'train'" in e.value and "rename the file" in e.value for e in at.sidebar.error)
    table = at.dataframe[0].value
    assert "train" not in set(table["ood_set"]) and "user" not in set(table["group"])
