"""Benchmark tooling (benchmarks/): CPU smoke runs, JSON fields, roofline helpers, step/loss
parity."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_sample, bench_train, max_batch, measure, roofline as rl, run_all
from benchmarks import report, train_step
from rdbm_jax import models, sde
from tests.helpers import REPO, config


# ------------------------------------------------------------------------------ roofline helpers
def test_normalize_cost_accepts_every_return_shape():
    full = {"flops": 10.0, "bytes accessed": 40.0, "transcendentals": 2.0, "utilization0{}": 1.0}
    want = {"flops": 10.0, "bytes_accessed": 40.0, "transcendentals": 2.0}
    assert rl.normalize_cost(full) == want
    assert rl.normalize_cost([full, {"flops": 99.0}]) == want  # older JAX: one dict per device
    empty = {"flops": None, "bytes_accessed": None, "transcendentals": None}
    for raw in (None, [], {}, {"flops": -1.0, "bytes accessed": float("nan")}, {"flops": "n/a"}):
        assert rl.normalize_cost(raw) == empty

    class Broken:
        def cost_analysis(self):
            raise NotImplementedError

    assert rl.cost_of(Broken()) == empty


def test_cost_of_a_compiled_matmul_counts_its_flops_and_bytes():
    a = jnp.ones((64, 32), jnp.float32)
    cost = rl.cost_of(jax.jit(lambda x: x @ x.T).lower(a).compile())
    assert cost["flops"] == pytest.approx(2 * 64 * 64 * 32, rel=0.05)
    assert cost["bytes_accessed"] >= 4 * (64 * 32 + 64 * 64)


def test_loop_scaled_picks_the_reading_closest_to_the_mac_count():
    body = {"flops": 100.0, "bytes_accessed": 8.0}
    assert rl.loop_scaled(body, 10, 1000.0) == (1000.0, 80.0, "xla × 10 (loop body counted once)")
    whole = {"flops": 990.0, "bytes_accessed": 80.0}
    assert rl.loop_scaled(whole, 10, 1000.0) == (990.0, 80.0, "xla")
    assert rl.loop_scaled({"flops": None, "bytes_accessed": 5.0}, 3,
                          7.0) == (7.0, None, "analytic (MAC count)")
    assert rl.loop_scaled(body, 1, 50.0)[2] == "xla"
    # XLA:GPU leaves cuDNN convolutions out: the MAC count replaces FLOPs that are far too low.
    flops, bytes_, source = rl.loop_scaled(body, 10, 13_000.0)
    assert (flops, bytes_) == (13_000.0,
                               80.0) and source.startswith("analytic FLOPs (XLA counted 8%")


def test_roofline_fractions_and_bound():
    peak = {"matmul_flops_per_s": 100.0, "copy_bytes_per_s": 10.0}
    r = rl.roofline(flops=50.0, bytes_moved=20.0, seconds=4.0, peak=peak)
    assert r["achieved_flops_per_s"] == 12.5 and r["frac_peak_matmul"] == 0.125
    assert r["achieved_bytes_per_s"] == 5.0 and r["frac_peak_bandwidth"] == 0.5
    assert r["bound"] == "memory" and r["frac_roofline"] == pytest.approx(2.0 / 4.0)
    r = rl.roofline(flops=1000.0, bytes_moved=1.0, seconds=20.0, peak=peak)
    assert r["bound"] == "compute" and r["frac_roofline"] == pytest.approx(10.0 / 20.0)
    r = rl.roofline(flops=None, bytes_moved=None, seconds=1.0, peak=None)
    assert r["frac_roofline"] is None and r["bound"] is None


def test_time_windows_counts_calls_and_syncs_each_window():
    calls, syncs = [], []
    t = measure.time_windows(lambda: calls.append(1) or len(calls), syncs.append, warmup=2, steps=7,
                             window=3)
    assert len(calls) == 2 + 9 and t["windows"] == 3 and t["calls"] == 9
    assert syncs == [2, 5, 8, 11]  # after the warm-up, then after each window
    assert 0 <= t["min_s"] <= t["median_s"]
    with pytest.raises(ValueError, match="window"):
        measure.time_windows(lambda: None, lambda x: x, warmup=0, steps=1, window=0)


def test_measured_peak_and_environment_name_the_device():
    peak = rl.measure_peak("float32", matmul_n=128, copy_mib=4, calls=2, window=1)
    assert peak["matmul_flops_per_s"] > 0 and peak["copy_bytes_per_s"] > 0
    assert peak["copy_bytes"] == 2 * 4 * 2 ** 20
    env = measure.environment("my label")
    assert env["device_name"] == "my label" and env["device_kind"] == jax.devices()[0].device_kind
    assert env["versions"]["jax"] == jax.__version__ and env["date_utc"]
    with pytest.raises(ValueError, match="dtype"):
        rl.measure_peak("int8")


def test_find_max_batch_stops_at_out_of_memory_only():
    def fn(batch):
        if batch >= 16:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return {"batch": batch}

    cleanups = []
    r = max_batch.find_max_batch(fn, 2, 1024, cleanup=lambda: cleanups.append(1))
    assert r["largest"] == {"batch": 8} and r["first_failure"]["batch"] == 16
    assert len(cleanups) == 4  # after every attempt: 2, 4, 8 and the failed 16
    assert max_batch.find_max_batch(fn, 2, 4)["largest"] == {"batch": 4}
    with pytest.raises(ValueError):
        max_batch.find_max_batch(lambda b: (_ for _ in ()).throw(ValueError("bug")), 2, 8)


def test_guarded_records_failures_only_when_asked():
    errors = []
    assert measure.guarded(True, errors, "ok", lambda: 3) == 3 and errors == []
    assert measure.guarded(True, errors, "twin B", lambda: 1 / 0) is None
    assert errors == ["twin B: ZeroDivisionError: division by zero"]
    with pytest.raises(ZeroDivisionError):
        measure.guarded(False, errors, "twin B", lambda: 1 / 0)


# ----------------------------------------------------------------------------- command lines
def test_command_lines_presets_and_errors():
    o = bench_train.parse(["--tiny", "--steps", "7"])
    assert (o.sizes, o.ks, o.batch, o.resolution, o.steps, o.dtype) == (["T"], [1], 2, 32, 7,
                                                                        "float32")
    o = bench_train.parse([])
    assert (o.sizes, o.ks, o.batch, o.resolution, o.dtype) == (["B", "L"], [1,
                                                                            4], 16, 256, "bfloat16")
    o = bench_sample.parse([])
    assert o.cases == [(16, 256, 256), (1, 720, 1280)] and o.nfe == 10
    assert bench_sample.parse(["--tiny", "--large", ""]).cases == [(2, 32, 32)]
    for bad in (["--size", "X"], ["--resolution", "100"], ["--steps-per-dispatch",
                                                           "0"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            bench_train.parse(bad)
    for bad in (["--large", "720by1280"], ["--large", "721x1280"], ["--nfe", "0"]):
        with pytest.raises(SystemExit):
            bench_sample.parse(bad)


def test_variants_and_overrides_parse_and_reach_the_real_program():
    o = bench_train.parse(["--variant", "cudnn:model.attention_impl=cudnn,model.remat=true"])
    assert o.variants == {"cudnn": {"model.attention_impl": "cudnn", "model.remat": "true"}}
    assert o.max_batch_variant == "best"
    for bad in (["--variant", "nocolon"], ["--variant", "base:model.remat=true"],
                ["--variant", "x:remat=true"], ["--max-batch-variant", "nope"]):
        with pytest.raises(SystemExit):
            bench_train.parse(bad)
    assert bench_sample.parse(["--attention-impl", "xla,cudnn"]).impls == ["xla", "cudnn"]
    with pytest.raises(SystemExit):
        bench_sample.parse(["--attention-impl", "flash"])
    from rdbm_jax.runtime import distributed

    prog, _, _ = bench_train.program_from_config("configs/default.py", "T", "float32", 2, 1,
                                                 distributed.make_mesh(),
                                                 {"model.remat": "true", "optim.ema_decay": "0.5"})
    assert prog.model.remat is True  # (cudnn attention cannot be traced without a GPU)
    assert prog.abstract.ema_decay == 0.5  # a float key: cast to the type it replaces
    with pytest.raises(ValueError, match="model.nope"):
        bench_train.program_from_config("configs/default.py", "T", "float32", 2, 1,
                                        distributed.make_mesh(), {"model.nope": "1"})


def test_predict_max_batch_from_the_memory_analysis():
    # batch 16 at 32²: inputs 2·16·32²·3·4 B; temp 16 × 10 MB; state 1 GB in, aliased out.
    inputs = 2 * 16 * 32 * 32 * 3 * 4
    row = {
        "batch": 16, "resolution": 32, "steps_per_dispatch": 1, "memory": {
            "temp_size_in_bytes": 16 * 10_000_000, "argument_size_in_bytes": 1_000_000_000 + inputs,
            "output_size_in_bytes": 1_000_000_000, "alias_size_in_bytes": 1_000_000_000
        }
    }
    plan = max_batch.predict_max_batch(row, free=11_000_000_000, fraction=1.0, floor=32, cap=1024)
    assert plan["fixed_bytes"] == 1_000_000_000
    assert plan["per_image_bytes"] == pytest.approx(10_000_000 + inputs / 16)
    assert plan["predicted_fit"] == int(10_000_000_000 // (10_000_000 + inputs / 16)) == 997
    assert plan["batch"] == 512  # the power of two below
    assert max_batch.predict_max_batch(row, 11_000_000_000, 1.0, 32, 256)["batch"] == 256  # the cap
    # not even 32
    assert max_batch.predict_max_batch(row, 1_100_000_000, 1.0, 32, 1024)["batch"] is None
    with pytest.raises(ValueError, match="memory analysis"):
        max_batch.predict_max_batch({**row, "memory": None}, 1, 1.0, 32, 64)


@pytest.mark.slow  # the whole benchmark pipeline end to end: ~30 s with a cold compilation cache
def test_run_all_tiny_writes_every_result(tmp_path):
    pytest.importorskip("torch")  # the PyTorch twin's rows are compared too (the [twins] extra)
    out = str(tmp_path)
    merged = run_all.main(["--tiny", "--skip-startup", "--out-dir", out])
    names = sorted(os.listdir(out))
    assert names == ["bench_sample.json", "bench_train.json", "results.json", "table.md"]
    with open(os.path.join(out, "bench_train.json"), encoding="utf-8") as f:
        train = json.load(f)
    env = train["environment"]
    assert env["device_kind"] == jax.devices()[0].device_kind and env["versions"]["jax"]
    assert env["torch_device"] == "cpu" and env["date_utc"]
    rows = {r["impl"]: r for r in train["results"]}
    ours, twin = rows["ours"], rows["twin_eager"]
    assert ours["step_impl"] == "rdbm_jax.program.program" and ours["finite"] and twin["finite"]
    for r in (ours, twin):
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["size"] == "T" and r["batch"] == 2
    # XLA's FLOPs agree with the independent MAC count (6 × MACs × batch) and bytes are reported.
    assert ours["cost_source"] == "xla" and ours["bytes_per_step"] > 0
    assert 0.8 < ours["flops_per_step"] / ours["flops_per_step_analytic"] < 1.2
    assert ours["frac_roofline"] > 0 and ours["frac_peak_matmul"] > 0
    # Both nets start with a zero output conv: the first loss is mean|x0| of the same batch.
    expected = np.abs(train_step.synthetic_batches(1, 2, 32)["x0"]).mean()
    assert ours["loss_first"] == pytest.approx(expected, rel=1e-5)
    assert twin["loss_first"] == pytest.approx(expected, rel=1e-5)
    assert any("twin_compiled" in s for s in train["skipped"])  # no CUDA: no torch.compile variant
    assert train["errors"] == []

    with open(os.path.join(out, "bench_sample.json"), encoding="utf-8") as f:
        sample = json.load(f)
    cases = [(r["impl"], r["batch"], r["height"], r["width"]) for r in sample["results"]]
    assert cases == [("ours", 2, 32, 32), ("twin_eager", 2, 32, 32), ("ours", 1, 40, 72),
                     ("twin_eager", 1, 40, 72)]
    for r in sample["results"]:
        assert r["e2e_ms"] > 0 and r["device_ms"] > 0 and r["images_per_s"] > 0 and r["nfe"] == 10
        if r["impl"] == "ours":
            assert r["cost_source"].startswith(
                "xla") and 0.8 < r["flops"] / r["flops_analytic"] < 1.2
        else:  # the same function: float32 outputs agree like the twin's parity test
            assert r["max_abs_diff_vs_ours"] < 1e-4

    assert sample["errors"] == []
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        assert json.load(f)["train"]["results"][0]["impl"] == "ours"
    with open(os.path.join(out, "table.md"), encoding="utf-8") as f:
        table = f.read()
    assert table == report.render(merged)
    assert "| T | 0.45 M | 2 | 32² | ours | base | 1 |" in table
    assert "| T | 2 × 32 × 32 | 10 | ours |" in table


def test_render_of_the_saved_h200_results(capsys):
    d = os.path.join(REPO, "benchmarks", "results", "h200-2026-11-27")
    merged = run_all.main([
        "--render",
        *(os.path.join(d, f) for f in ("run1_results.json", "run2_train.json", "run2_sample.json"))
    ])
    b = next(r for r in merged["train"]["results"] if r["impl"] == "ours" and r["size"] == "B")
    # XLA:GPU counted 8 % of the MAC count (cuDNN convolutions left out): the MAC count is used.
    assert b["flops_per_step"] == b["flops_per_step_analytic"] and "XLA counted 8%" in b[
        "cost_source"]
    assert b["frac_peak_matmul"] == pytest.approx(
        b["flops_per_step"] / (b["step_ms"] / 1e3) / 769.87e12, rel=1e-3)
    table = capsys.readouterr().out
    assert table == report.render(merged)
    # Each of our sampling rows against the twin row of its own run (run 1: 281.6 ms; run 2: 284.7
    # ms).
    assert "| ours | xla | 77.3 | 68.5 | 206.9 | 3.64× (4.02× on device) |" in table
    assert "| ours | cudnn | 68.0 | 59.3 | 235.2 | 4.19× (4.79× on device) |" in table
    assert "| B | 3.63 M | 16 | 256² | ours | cudnn | 1 | 25.54 | 626.4 | 2.65× | 1.58× |" in table


@pytest.mark.slow
def test_run_all_tiny_command_with_cold_and_warm_startup(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    proc = subprocess.run([
        sys.executable, "-m", "benchmarks.run_all", "--tiny", "--out-dir",
        str(tmp_path), "--cache-dir",
        str(tmp_path / "cache")
    ], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results.json", encoding="utf-8") as f:
        startup = json.load(f)["startup"]
    for run in ("cold", "warm"):
        r = startup[run]
        assert r["step_impl"] == "rdbm_jax.program.program"
        assert 0 < r["imports_s"] < r["to_step1_s"] and r["first_step_s"] > 0
    assert os.listdir(tmp_path / "cache")  # the cold run filled the persistent cache
    assert "Time to the first train step" in proc.stdout


# -------------------------------------------------------------------- twin = ours, loss and grads
def test_twin_train_step_loss_and_gradients_equal_ours(monkeypatch):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_twin as tw
    from rdbm_jax import program

    torch.set_num_threads(1)
    cfg = config("default", None)
    cfg.model.size = "T"
    model = models.create_model(cfg.model)
    schedule = sde.make_schedule(num_timesteps=cfg.bridge.num_timesteps,
                                 theta_schedule=cfg.bridge.theta_schedule, lam=cfg.bridge.lam,
                                 preset=cfg.bridge.preset)
    params = bench_sample.make_params(model, seed=11)
    rng = np.random.default_rng(12)
    x0 = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    mu = x0.copy()
    mu[:, 2:6, 2:6] = 1.0  # a masked box: π = 0 outside it
    key = jax.random.PRNGKey(13)
    loss_fn = program.make_loss_fn(model, schedule, cfg.bridge, cfg.train.loss)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, {"x0": x0, "mu": mu}, key)
    # The t and noise that make_loss_fn draws from this key, handed to the twin's step.
    k_t, k_n, _ = jax.random.split(key, 3)
    t = np.asarray(jax.random.randint(k_t, (2,), 0, schedule.num_timesteps))
    noise = np.asarray(jax.random.normal(k_n, x0.shape, jnp.float32))
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    monkeypatch.setattr(torch, "randint", lambda *a, **k: torch.from_numpy(t.copy()).long())
    monkeypatch.setattr(torch, "randn_like", lambda x, **k: nchw(noise.copy()).contiguous(
        memory_format=torch.channels_last))
    twin = tw.load_flax_params(tw.TwinUNet("T"), {"params": params})
    step = tw.make_train_step(twin, torch.optim.Adam(twin.parameters(), lr=0.0),
                              (np.asarray(schedule.Theta), np.asarray(schedule.Sigma)))
    twin_loss = float(step(nchw(x0), nchw(mu)))
    assert float(loss) > 0.05
    np.testing.assert_allclose(twin_loss, float(loss), rtol=1e-5)
    # Our gradients in the twin's layout (the weight converter applied to the gradient tree).
    ours = dict(tw.load_flax_params(tw.TwinUNet("T"), {"params": grads}).named_parameters())
    scale = max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree_util.tree_leaves(grads))
    for name, p in twin.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), ours[name].detach().numpy(), rtol=1e-3,
                                   atol=1e-4 * scale, err_msg=name)
