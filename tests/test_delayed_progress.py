"""widgets.DelayedProgress: no bar for quick work, then at most one update per interval."""
from __future__ import annotations

from ood_core.app.widgets import DelayedProgress


class FakeBar:
    def __init__(self):
        self.shown, self.emptied = [], False

    def progress(self, fraction, text=""):
        self.shown.append((fraction, text))

    def empty(self):
        self.emptied = True


def _progress(delay_s, every_s):
    now = [100.0]
    bars = []

    def make():
        bars.append(FakeBar())
        return bars[-1]

    return DelayedProgress(delay_s, every_s, make_bar=make, clock=lambda: now[0]), now, bars


def test_quick_work_draws_no_bar():
    p, now, bars = _progress(0.5, 0.25)
    for t in (0.0, 0.1, 0.49):
        now[0] = 100.0 + t
        assert not p.update(t, "working")
    p.empty()
    assert bars == []


def test_slow_work_draws_after_the_delay_and_then_at_most_every_interval():
    p, now, bars = _progress(0.5, 0.25)
    drawn = []
    for t in (0.2, 0.5, 0.6, 0.74, 0.75, 0.9, 1.1, 1.3):
        now[0] = 100.0 + t
        if p.update(min(t, 1.5), f"t={t}"):
            drawn.append(t)
    assert drawn == [0.5, 0.75, 1.1] and len(bars) == 1  # one bar, updated in place
    assert bars[0].shown == [(0.5, "t=0.5"), (0.75, "t=0.75"), (1.0, "t=1.1")]  # fractions clipped to [0, 1]
    p.empty()
    assert bars[0].emptied


def test_no_delay_draws_the_first_update_at_once():
    p, now, bars = _progress(0.0, 0.25)
    assert p.update(0.0, "starting") and bars[0].shown == [(0.0, "starting")]
