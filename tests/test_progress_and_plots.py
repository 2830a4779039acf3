"""Progress bars stay quiet off a terminal and keep log lines apart; the plots label what was
run."""
import io
import logging
import sys

import pytest

from rdbm_jax.runtime import progress
from rdbm_jax import sweep
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


@pytest.fixture
def console(monkeypatch):
    """A terminal as sys.stderr, and a root console handler on it (as main.py's basicConfig makes);
    call it in the test body (pytest's capture replaces sys.stderr between setup and the test)."""
    root, handlers = logging.getLogger(), []

    def make():
        stream = _Terminal()
        monkeypatch.setattr(sys, "stderr", stream)
        handlers.append(logging.StreamHandler(stream))
        root.addHandler(handlers[-1])
        return stream, handlers[-1]

    old_level = root.level
    root.setLevel(logging.INFO)
    yield make
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(old_level)


def test_log_lines_go_through_tqdm_while_a_bar_is_up(console):
    stream, handler = console()
    with progress.bar(3, "eval") as pbar:
        pbar.update(1)
        assert handler not in logging.getLogger().handlers  # replaced by a tqdm.write handler
        logging.getLogger("rdbm_jax").info("a log line")
        pbar.update(2)
    assert handler in logging.getLogger().handlers  # given back when the bar closes
    text = stream.getvalue()
    at = text.index("a log line")
    assert text[at - 1] in "\r\n", repr(text[max(0, at - 40):at + 12])  # on its own line, not glued
    logging.getLogger("rdbm_jax").info("after the bar")
    assert stream.getvalue().endswith("after the bar\n")


def test_bar_says_it_is_compiling_until_the_first_item(console):
    stream, _ = console()
    with progress.bar(2, "restore") as pbar:
        assert progress.COMPILING in stream.getvalue()
        pbar.update(2)
    last = stream.getvalue().rstrip("\n").split("\r")[-1]
    assert "2/2" in last and progress.COMPILING not in last


def test_no_bar_when_there_is_nothing_to_do(console):
    stream, handler = console()
    with progress.bar(0, "restore"):
        assert handler in logging.getLogger().handlers
    assert stream.getvalue() == ""


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
    masked = sweep.figure([{**r, "psnr_masked": 18.0 + r["nfe"] / 10, "psnr_masked_baseline": 19.0}
                           for r in rows])
    assert [ax.get_ylabel()
            for ax in masked.axes] == ["PSNR (dB)", "SSIM", "PSNR inside the holes (dB)"]
    assert [line.get_label()
            for line in masked.axes[2].get_lines()] == ["η = 0", "η = 1", "baseline"]
    plt.close(masked)
    sweep.plot(rows, str(tmp_path / "s.png"))
    # 10 × 3.8 in at 120 dpi, lines for η = 0 and η = 1
    assert_line_plot(str(tmp_path / "s.png"), size=(1200, 456), lines=2)
