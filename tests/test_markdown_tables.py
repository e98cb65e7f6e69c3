"""The app's static tables are Markdown (ood_core.app.tables.markdown_table): cells formatted
as documented, Markdown's special characters escaped, and a round trip through the test
suites' own parser (tests/apptest_helpers.parse_markdown_table) that gives the values back at
the precision shown."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apptest_helpers import as_shown, parse_markdown_table
from ood_core.app.tables import format_cell, markdown_table


@pytest.mark.parametrize("value, text", [
    (0.923456, "0.9235"), (93.4, "93.4"), (2.0, "2"), (-0.0, "0"), (-0.00004, "-4.000e-05"),
    (1.2345e-5, "1.234e-05"), (123456.0, "1.235e+05"), (0.001, "0.001"), (np.float32(0.5), "0.5"),
    (float("nan"), "–"), (None, "–"), (True, "yes"), (np.bool_(False), "no"), (7, "7"), (np.int64(-3), "-3"),
    ("a|b", "a\\|b"), ("$x$", "\\$x\\$"), ("mean ||J||_F", "mean \\|\\|J\\|\\|\\_F"), ("two\nlines", "two lines"),
])
def test_cells_are_written_as_documented(value, text):
    assert format_cell(value) == text


def test_a_table_round_trips_at_the_precision_shown():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"score": ["msp", "a|b $c$", "x_y*z"], "value": rng.normal(size=3) * [1, 1e-5, 1e6],
                       "n": [1, 2, 3], "called ID": [True, False, True], "gap": [np.nan, 0.5, 2.25]})
    text = markdown_table(df)
    lines = text.splitlines()
    assert lines[1] == "|:---|---:|---:|:---|---:|"  # numbers right-aligned, text and booleans left
    back = parse_markdown_table(text)
    assert list(back.columns) == list(df.columns)
    assert list(back["score"]) == list(df["score"])  # escapes undone
    assert list(back["called ID"]) == [True, False, True]
    for got, want in zip(back["value"], df["value"]):
        assert got == as_shown(want) and got != pytest.approx(want, rel=1e-9)  # rounded, but close
    assert np.isnan(back["gap"][0]) and list(back["gap"][1:]) == [0.5, 2.25] and list(back["n"]) == [1, 2, 3]


def test_index_and_column_levels_become_columns():
    wide = pd.DataFrame([[91.25, 3.5]], index=pd.Index(["msp"], name="score"),
                        columns=pd.MultiIndex.from_tuples([("AUROC %", "near"), ("FPR95 %", "near")]))
    back = parse_markdown_table(markdown_table(wide, index=True))
    assert list(back.columns) == ["score", "AUROC % near", "FPR95 % near"]
    assert back.iloc[0].tolist() == ["msp", 91.25, 3.5]
