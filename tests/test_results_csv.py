"""Results tables written by two runs at once: no run's rows are written over, a point measured
twice keeps its first measurement."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from experiments import results_csv

FIELDS = ("name", "i", "x")
NUMERIC = ("i", "x")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = """
import sys
from experiments import results_csv
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    results_csv.add_rows(path, ("name", "i", "x"), ("i", "x"),
                         [{"name": name, "i": i, "x": 0.5}], ("name", "i"))
"""


def test_a_run_with_a_stale_view_keeps_the_rows_another_run_added(tmp_path):
    path = str(tmp_path / "new" / "t.csv")  # its folder is made on the first write
    stale = results_csv.read_rows(path, FIELDS, NUMERIC)  # run A reads the table: empty
    results_csv.add_rows(path, FIELDS, NUMERIC, [{"name": "b", "i": 1, "x": 2.0}], ("name", "i"))
    assert stale == []
    rows = results_csv.add_rows(path, FIELDS, NUMERIC, [{"name": "a", "i": 1, "x": 3.0}],
                                ("name", "i"))
    assert [(r["name"], r["x"]) for r in rows] == [("b", 2.0), ("a", 3.0)]
    assert results_csv.read_rows(path, FIELDS, NUMERIC) == rows


def test_a_point_measured_twice_keeps_its_first_row(tmp_path, caplog):
    path = str(tmp_path / "t.csv")
    results_csv.add_rows(path, FIELDS, NUMERIC, [{"name": "a", "i": 1, "x": 2.0}], ("name", "i"))
    with caplog.at_level(logging.WARNING, logger="rdbm_jax"):
        # the key matches though the new row holds an int where the file holds "1.0"
        rows = results_csv.add_rows(path, FIELDS, NUMERIC,
                                    [{"name": "a", "i": 1, "x": 9.0},
                                     {"name": "a", "i": 2, "x": 4.0}], ("name", "i"))
    assert [(r["i"], r["x"]) for r in rows] == [(1.0, 2.0), (2.0, 4.0)]
    assert "1 row(s) already measured by another run" in caplog.text


def test_writers_in_separate_processes_lose_no_row(tmp_path):
    path = str(tmp_path / "t.csv")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, name, str(n)], env=env,
                              cwd=REPO, stderr=subprocess.PIPE, text=True)
             for name in ("p", "q", "r")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = results_csv.read_rows(path, FIELDS, NUMERIC)
    assert sorted((r["name"], r["i"]) for r in rows) == sorted(
        (name, float(i)) for name in ("p", "q", "r") for i in range(n))
