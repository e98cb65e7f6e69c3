"""The Vega-Lite figure builders of ``ood_core.app.figures``, checked against counts made here."""
from __future__ import annotations

import numpy as np
import pytest

from apptest_helpers import VegaView, check_histogram
from ood_core.app import figures


def test_density_table_counts_every_finite_value_once_on_shared_bins():
    rng = np.random.default_rng(0)
    values = {"ID (test)": rng.normal(size=500), "OOD: far": np.r_[rng.normal(3.0, 0.5, size=200), np.nan, np.inf]}
    fig = figures.distributions_figure(values, "score", "t")
    check_histogram(VegaView(fig.spec, fig.table), values)  # brute-force counts per bin
    edges = {name: rows[["start", "end"]].to_numpy() for name, rows in fig.table.groupby("set")}
    np.testing.assert_array_equal(edges["ID (test)"], edges["OOD: far"])  # one set of bins for both
    assert len(edges["ID (test)"]) == figures.HIST_BINS
    pooled = np.r_[values["ID (test)"], values["OOD: far"][:200]]
    assert fig.table["start"].min() == pooled.min() and fig.table["end"].max() == pooled.max()


def test_density_table_edge_cases():
    constant = figures.density_table({"a": np.full(7, 2.5)})
    assert constant["count"].sum() == 7 and ((constant["end"] - constant["start"]) * constant["density"]).sum() == \
        pytest.approx(1.0)
    empty = figures.density_table({"a": np.array([1.0, 2.0]), "only NaN": np.array([np.nan])})
    assert set(empty["set"]) == {"a"}  # a set with no finite value draws no bar
    assert figures.density_table({"a": np.array([np.nan])}).empty


def test_threshold_rule_and_legend_order():
    fig = figures.distributions_figure({"ID (test)": [0.0, 1.0], "OOD: b": [2.0], "OOD: c": [3.0]}, "s", None,
                                       threshold=1.5)
    bars, rule = fig.spec["layer"]
    assert bars["encoding"]["color"]["scale"]["domain"] == ["ID (test)", "OOD: b", "OOD: c"]
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["x"]["datum"] == 1.5
    assert "title" not in fig.spec


def test_roc_figure_draws_the_given_points_in_order():
    fpr, tpr = np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.6, 0.9, 1.0])
    fig = figures.roc_figure({"a": (fpr, tpr)}, marker=(0.5, 0.9))
    np.testing.assert_array_equal(fig.table["FPR"], fpr)
    np.testing.assert_array_equal(fig.table["TPR"], tpr)
    assert fig.spec["layer"][0]["encoding"]["order"]["field"] == "_order"  # drawn in row order, not sorted by x
    assert [layer.get("name") for layer in fig.spec["layer"][1:]] == ["chance", "threshold"]
