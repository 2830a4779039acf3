"""Progress bars stay quiet off a terminal; the sweep plot labels the NFE values that were run."""
import io
import sys

import pytest

from rdbm_jax import progress, sweep
from tests.helpers import assert_line_plot


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar_only_on_a_terminal(monkeypatch, tty):
    stream = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress.bar(3, "eval") as pbar:
        for _ in range(3):
            pbar.update(1)
    text = stream.getvalue()
    assert ("eval" in text and "3/3" in text) if tty else text == ""


def test_sweep_plot_ticks_are_the_nfe_values_run(tmp_path):
    import matplotlib.pyplot as plt

    rows = [{"step": 7, "nfe": n, "eta": e, "psnr": 20.0 + n / 10, "ssim": 0.5 + n / 200}
            for e in (0.0, 1.0) for n in (2, 5, 10, 20, 50)]
    fig = sweep.figure(rows)
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "5", "10", "20", "50"]
        assert [t.get_text() for t in ax.get_xticklabels(minor=True)] == []
        assert [line.get_label() for line in ax.get_lines()] == ["η = 0", "η = 1"]
    plt.close(fig)
    few = sweep.figure([r for r in rows if r["nfe"] in (5, 10)])
    assert few.axes[0].get_xscale() == "linear"
    assert [t.get_text() for t in few.axes[0].get_xticklabels()] == ["5", "10"]
    plt.close(few)
    sweep.plot(rows, str(tmp_path / "s.png"))
    # 10 × 3.8 in at 120 dpi, lines for η = 0 and η = 1
    assert_line_plot(str(tmp_path / "s.png"), size=(1200, 456), lines=2)
