"""What evaluation reports look like: score text, log lines, the comparison table, PNG grids and
the metrics.json / per_image.csv files (eval, sweep and validation print through these)."""
from __future__ import annotations

import csv
import io

import ml_collections
import numpy as np
from PIL import Image

from rdbm_jax import data
from rdbm_jax.runtime import paths, strict_json
from rdbm_jax.evaluation.scoring import KEPT, MASKED, WHOLE, is_test_set, set_of, task_of

GRID_HEIGHT = 192  # every cell of a PNG grid is resized to this height
GRID_COLUMNS = ("degraded input", "classical baseline", "restored", "ground truth")  # every row
HEADER_HEIGHT = 24  # the white strip with the column labels (and another with the title, if any)
# The first columns of per_image.csv (test_set: named sets only).
ID_COLUMNS = ("task", "test_set", "name")


# ------------------------------------------------------------------------------------ text
def score_text(key: str, value: float) -> str:
    """One score as every report prints it (log lines and tables alike, so that quoting either
    gives the same digits): PSNR in dB to 2 decimals, SSIM, LPIPS and the rest to 4."""
    return f"{value:.2f}" if key.startswith("psnr") else f"{value:.4f}"


def summary_line(scores: dict[str, float], prefix: str = "") -> str:
    """'psnr 24.10 | baseline 22.31 | input 10.59; ssim ...' for the scores present (one line)."""
    parts = []
    for key in WHOLE + MASKED + KEPT:
        if f"{prefix}{key}" not in scores:
            continue
        values = [f"{key} {score_text(key, scores[prefix + key])}"]
        values += [f"{sfx} {score_text(key, scores[prefix + key + '_' + sfx])}"
                   for sfx in ("baseline", "input") if f"{prefix}{key}_{sfx}" in scores]
        parts.append(" | ".join(values))
    return "; ".join(parts)


def title(label: str, entry: dict) -> str:
    """A report entry's name as logs and tables print it (a task with named test sets says it
    averages them)."""
    n = entry.get("num_test_sets")
    return f"{label} [mean over {n} test set{'s' if n > 1 else ''}]" if n else label


def protocol_name(cfg: ml_collections.ConfigDict) -> str:
    """The evaluation protocol in a few words, e.g. 'RGB, quantize round, SSIM gaussian,
    border 0, NFE 10'."""
    ev = cfg.eval
    return (f"{ev.color.upper()}, quantize {ev.quantize}, SSIM {ev.ssim_window}, "
            f"border {ev.crop_border}, NFE {cfg.sample.num_steps}")


def comparison_table(per_task: dict[str, dict]) -> str:
    """A plain-text table: one block per test set, task and overall (`by_task` order), rows
    model | baseline | input, a column per score."""
    lines = []
    for label, s in per_task.items():
        cols = [k for k in WHOLE + MASKED + KEPT if k in s]
        lines.append(f"{title(label, s)} ({s.get('num_images', 0)} images; "
                     f"baseline: {s.get('baseline', 'per task')})")
        lines.append(f"  {'':<10}" + "".join(f"{c:>14}" for c in cols))
        for row, sfx in (("model", ""), ("baseline", "_baseline"), ("input", "_input")):
            cells = [f"{score_text(c, s[c + sfx]):>14}" if c + sfx in s else f"{'—':>14}"
                     for c in cols]
            lines.append(f"  {row:<10}" + "".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ files
def write_report(out_dir: str, rows: list[dict], per_task: dict, info: dict) -> None:
    """`metrics.json` (per task, per named test set as test_sets.<task>.<set>, overall; with the
    protocol) and `per_image.csv`, each written whole (`paths`: a local folder or an object
    store)."""
    tasks = {k: v for k, v in per_task.items() if k != "overall" and not is_test_set(k)}
    test_sets: dict[str, dict] = {}
    for label, v in per_task.items():
        if is_test_set(label):
            test_sets.setdefault(task_of(label), {})[set_of(label)] = v
    report = {**info, "tasks": tasks, **({"test_sets": test_sets} if test_sets else {}),
              "overall": per_task["overall"]}
    paths.write_text(paths.join(out_dir, "metrics.json"), strict_json.dumps(report, indent=2))
    present = {k for r in rows for k in r}
    order = dict.fromkeys(ID_COLUMNS + tuple(k for r in rows for k in r))
    fields = [k for k in order if k in present]
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    paths.write_text(paths.join(out_dir, "per_image.csv"), table.getvalue())


# ------------------------------------------------------------------------------------ grids
def to_cell(img: np.ndarray) -> np.ndarray:
    """[-1, 1] image -> uint8 resized to GRID_HEIGHT rows."""
    u8 = data.to_uint8(img)
    h, w = u8.shape[:2]
    size = (max(1, round(w * GRID_HEIGHT / h)), GRID_HEIGHT)
    return np.asarray(Image.fromarray(u8).resize(size, Image.BICUBIC))


def grid_labels(baseline: str) -> tuple[str, ...]:
    """The column titles of a grid, the baseline's named (e.g. 'biharmonic (true mask)')."""
    return (GRID_COLUMNS[0], baseline or GRID_COLUMNS[1]) + GRID_COLUMNS[2:]


def make_grid(rows: list[list[np.ndarray]], gap: int = 4,
              labels: tuple[str, ...] = GRID_COLUMNS, title: str = "") -> np.ndarray:
    """Rows of [-1, 1] images (mu | baseline | restored | x0) -> one uint8 grid, white gaps, column
    labels on top, and above them `title` (e.g. the checkpoint step) when given."""
    white = np.full((GRID_HEIGHT, gap, 3), 255, np.uint8)
    cells = [[to_cell(c) for c in row] for row in rows]
    # each row: its cells with a white gap between two (the slice drops the last gap)
    rendered = [np.concatenate([part for c in row for part in (c, white)][:-1], axis=1)
                for row in cells]
    width = max(r.shape[1] for r in rendered)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255)
              for r in rendered]
    grid = np.concatenate(padded, axis=0)[:-gap]
    strips = [_header((title,), [width], width, gap)] if title else []
    if labels:
        strips.append(_header(labels, [c.shape[1] for c in cells[0]], width, gap))
    return np.concatenate(strips + [grid])


def _header(labels: tuple[str, ...], widths: list[int], total: int, gap: int) -> np.ndarray:
    """A white strip with each label centred over its column of the first row."""
    from PIL import ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    strip = Image.new("RGB", (total, HEADER_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    x = 0
    for label, w in zip(labels, widths):
        draw.text((x + w / 2, HEADER_HEIGHT / 2), label, fill="black", font=font, anchor="mm")
        x += w + gap
    return np.asarray(strip)
