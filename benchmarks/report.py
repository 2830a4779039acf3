"""The benchmarks' markdown report: saved runs merged, the train and sampling tables."""
from __future__ import annotations

import json
from typing import Any

from benchmarks import roofline as rl
from benchmarks.measure import fmt


def merge_saved(paths: list[str]) -> dict[str, Any]:
    """Saved results (a results.json, then bench_* JSONs) as one run, with the roofline of every row
    of ours recomputed from its stored XLA cost and MAC count by the current `rl.loop_scaled`."""
    merged: dict[str, Any] = {}
    for i, path in enumerate(paths):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if i == 0:
            merged = data
            continue
        kind = "sample" if any("e2e_ms" in r for r in data["results"]) else "train"
        base = merged.setdefault(kind, {"results": [], "skipped": [], "errors": []})
        for key in ("results", "skipped", "errors"):
            base[key] = base[key] + data[key]
    peak = merged.get("peak")
    for r in (merged.get("train") or {}).get("results", []):
        if r.get("impl") == "ours" and r.get("flops_per_step_analytic") and r.get(
                "steps_per_dispatch") == 1:
            r["flops_per_step"], r["bytes_per_step"], r["cost_source"] = rl.loop_scaled(
                r["xla_cost_per_dispatch"], 1, r["flops_per_step_analytic"])
            r.update(rl.roofline(r["flops_per_step"], r["bytes_per_step"], r["step_ms"] / 1e3,
                                 peak))
    for r in (merged.get("sample") or {}).get("results", []):
        if r.get("impl") == "ours" and r.get("flops_analytic"):
            r["flops"], r["bytes"], r["cost_source"] = rl.loop_scaled(
                r["xla_cost_per_dispatch"], r["nfe"], r["flops_analytic"])
            r.update(rl.roofline(r["flops"], r["bytes"], r["device_ms"] / 1e3, peak))
    return merged


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def _sci(value: float | None) -> str:
    return "–" if value is None else f"{value:.1e}"


def _rate(value: float | None, frac: float | None, scale: float) -> str:
    if value is None:
        return "–"
    text = f"{value / scale:.3g}"
    return f"{text} ({fmt(frac, pct=True)})" if frac is not None else text


def train_table(results: list[dict]) -> list[str]:
    """Markdown rows: every train configuration, ours vs the twin of the same size."""
    rows = [
        "| size | params | batch | res | impl | variant | K | ms/step | img/s | × twin eager "
        "| × twin compiled | GFLOP/step | GB/step | TFLOP/s (% peak) | GB/s (% peak) "
        "| % roofline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    ]
    twins = {(r["size"], r["batch"], r["impl"]): r["images_per_s"] for r in results
             if r["impl"].startswith("twin") and "images_per_s" in r}
    for r in results:
        if "step_ms" not in r:
            continue
        ours = r["impl"] == "ours"
        eager = twins.get((r["size"], r["batch"], "twin_eager"))
        compiled = twins.get((r["size"], r["batch"], "twin_compiled"))
        rows.append(
            f"| {r['size']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['resolution']}² "
            f"| {r['impl']} | {r.get('variant', 'base')} | {r.get('steps_per_dispatch', '–')} "
            f"| {r['step_ms']:.2f} "
            f"| {r['images_per_s']:.1f} "
            f"| {_ratio(r['images_per_s'], eager) if ours else '–'} "
            f"| {_ratio(r['images_per_s'], compiled) if ours else '–'} "
            f"| {fmt(r.get('flops_per_step'), 1e9, 2)} | {fmt(r.get('bytes_per_step'), 1e9, 2)} "
            f"| {_rate(r.get('achieved_flops_per_s'), r.get('frac_peak_matmul'), 1e12)} "
            f"| {_rate(r.get('achieved_bytes_per_s'), r.get('frac_peak_bandwidth'), 1e9)} "
            f"| {fmt(r.get('frac_roofline'), pct=True)} |")
    for r in results:
        plan = r.get("max_batch_plan")
        if plan:
            rows.append(
                f"\nlargest batch, memory model (size {r['size']}, {r['variant']}): XLA's memory "
                f"analysis at batch {plan['from_batch']} gives "
                f"{plan['per_image_bytes'] / 1e6:.0f} MB per image + "
                f"{plan['fixed_bytes'] / 1e9:.2f} GB fixed; {plan['free_bytes'] / 1e9:.1f} GB free "
                f"({plan['free_source']}) × {plan['fraction']:.0%} fits {plan['predicted_fit']} "
                f"images; timed at the power of two below: {r['batch']}")
        if r["impl"].endswith("max_batch"):
            best = r.get("largest") or {}
            rows.append(f"\nlargest batch that fit ({r['impl']}, size {r['size']}): "
                        f"{best.get('batch', '–')} at {fmt(best.get('images_per_s'))} img/s; "
                        f"first failure: {r.get('first_failure')}")
    return rows


def sample_table(results: list[dict]) -> list[str]:
    """Markdown rows: every sampling case, ours vs the twin's Python loop."""
    rows = [
        "| size | batch × H × W | NFE | impl | attention | ms end to end | ms on device | img/s "
        "| × twin eager | GFLOP | GB | % roofline | max abs diff ours vs twin |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    ]
    shape = lambda r: (r["batch"], r["height"], r["width"])
    for i, r in enumerate(results):  # the twin of the same case that ran next (the same stage)
        twin = next((t for t in results[i:] if t["impl"] == "twin_eager" and shape(t) == shape(r)),
                    None)
        ours = r["impl"] == "ours"
        ratio = (
            f"{_ratio(twin['e2e_ms'], r['e2e_ms'])} ({_ratio(twin['device_ms'], r['device_ms'])} "
            "on device)" if ours and twin else "–")
        rows.append(
            f"| {r['size']} | {r['batch']} × {r['height']} × {r['width']} | {r['nfe']} "
            f"| {r['impl']} "
            f"| {r.get('attention_impl', '–')} | {r['e2e_ms']:.1f} | {r['device_ms']:.1f} "
            f"| {r['images_per_s']:.1f} | {ratio} "
            f"| {fmt(r.get('flops'), 1e9, 2)} | {fmt(r.get('bytes'), 1e9, 2)} "
            f"| {fmt(r.get('frac_roofline'), pct=True)} "
            f"| {_sci(r.get('max_abs_diff_vs_twin', r.get('max_abs_diff_vs_ours')))} |")
    return rows


def render(merged: dict[str, Any]) -> str:
    """The whole markdown report of one run."""
    env, peak = merged.get("environment") or {}, merged.get("peak") or {}
    v = env.get("versions", {})
    lines = [f"### rdbm_jax benchmarks — preset `{merged.get('preset')}`", "",
             f"- device: **{env.get('device_name', '?')}** ({env.get('platform', '?')}, "
             f"{env.get('device_count', '?')} device(s)); torch device: {env.get('torch_device')}; "
             f"host: {env.get('host')}",
             f"- versions: jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, flax {v.get('flax')}, "
             f"optax {v.get('optax')}, torch {v.get('torch')}, python {env.get('python')}; "
             f"date {env.get('date_utc')}; wall {merged.get('wall_s', 0):.0f} s"]
    if peak:
        lines.append(f"- measured peak: matmul {peak['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s "
                     f"({peak['matmul_n']}³ {peak['matmul_dtype']}), copy "
                     f"{peak['copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write)")
    train = (merged.get("train") or {}).get("results", [])
    impls = sorted({r["step_impl"] for r in train if r.get("step_impl")})
    if impls:
        lines.append(f"- our train step: {'; '.join(impls)}")
    s = merged.get("startup")
    if s:
        lines += ["", "**Time to the first train step** (fresh process: imports, model, init, step "
                  "compile or cache load, one step; data pipeline not included)", "",
                  "| run | persistent cache | to step 1 (s) | imports (s) | build + init (s) "
                  "| first step call (s) |", "|---|---|---|---|---|---|"]
        for run, label in (("cold", "empty"), ("warm", "filled by the cold run")):
            r = s[run]
            lines.append(f"| {run} | {label} | {r['to_step1_s']:.1f} | {r['imports_s']:.1f} "
                         f"| {r['build_and_init_s']:.1f} | {r['first_step_s']:.1f} |")
    if train:
        lines += [
            "", "**Train step** (median over timing windows; ratios: our img/s ÷ the twin's)", ""
        ]
        lines += train_table(train)
    sample = (merged.get("sample") or {}).get("results", [])
    if sample:
        lines += ["", "**Restoration** (ratios: the twin's time ÷ ours)", ""]
        lines += sample_table(sample)
    skipped = (merged.get("skipped", []) + (merged.get("train") or {}).get("skipped", [])
               + (merged.get("sample") or {}).get("skipped", []))
    if skipped:
        lines += ["", "Skipped:"] + [f"- {x}" for x in skipped]
    errors = (merged.get("train") or {}).get("errors", []) + (merged.get("sample") or {}).get(
        "errors", [])
    if errors:
        lines += ["", "**Errors** (the configuration failed; traceback in the log):"]
        lines += [f"- {x}" for x in errors]
    return "\n".join(lines) + "\n"
