"""Every task config: instantiate it, train 2 steps and restore (2 sampling steps) on generated
data."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rdbm_jax.checkpointing import checkpoints
from rdbm_jax import config as config_lib, train
from rdbm_jax.data.spec import named_sources
from rdbm_jax.errors import ConfigError
from tests.helpers import CONFIGS, REPO, config, read_metrics, run_cli

SIZES = {"T": 0.45e6, "B": 3.65e6, "L": 7.73e6}


def _img(path: str, h: int, w: int, seed: int, dark: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    Image.fromarray((img * (0.4 if dark else 1.0)).astype(np.uint8)).save(path)


def lay_out(cfg, root: str) -> None:
    """Generated images in exactly the folders the config names (relative to data.root)."""
    nodes = [src.cfg for task in cfg.data.tasks for which in ("train", "eval")
             for src in named_sources(cfg.data, task, which)]  # every (named) source of every task
    for n, src in enumerate(nodes):
        for i in range(2):
            seed = 10 * n + i
            if src.kind == "paired":
                _img(os.path.join(root, src.gt_dir, f"im{i}.png"), 40, 48, seed)
                _img(os.path.join(root, src.lq_dir, f"im{i}.png"), 40, 48, seed, dark=True)
            elif src.kind == "side_by_side":
                _img(os.path.join(root, src.dir, f"pair{i}.jpg"), 40, 80, seed)
            else:
                _img(os.path.join(root, src.dir, f"face{i}.png"), 40, 40, seed)


# CI's 8 minutes: with a cold compilation cache on the 2-core Xeon (2026-12-08) inpaint (37 s),
# universal (26 s) and edges2handbags (~18 s) are slow; demo and udc stay fast (the same code).
@pytest.mark.parametrize("name, arg", [
    ("demo", "tiny"), pytest.param("inpaint", "tiny", marks=pytest.mark.slow),
    pytest.param("universal", "tiny", marks=pytest.mark.slow), ("udc", "toled,tiny"),
    pytest.param("edges2handbags", "tiny", marks=pytest.mark.slow)])
def test_config_trains_two_steps_and_restores(name, arg, tmp_path):
    cfg = config(name, arg)
    config_lib.validate(cfg)
    if name != "demo":
        lay_out(cfg, str(tmp_path / "data"))
        cfg.data.root = str(tmp_path / "data")
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(cfg, workdir)
    rows = read_metrics(workdir)
    val = [r for r in rows if "val/psnr" in r]
    assert val and np.isfinite(val[-1]["val/psnr"])  # the 2-step restoration of the eval images ran
    if len(cfg.data.tasks) > 1:
        assert {f"val/{t}/psnr" for t in cfg.data.tasks} <= set(val[-1])
    if name == "universal":  # named test sets: val/<task>/<set>/… beside val/<task>/…
        assert {"val/derain/rain100h/psnr", "val/derain/rain100l/psnr_input",
                "val/deblur/gopro/psnr"} <= set(val[-1])
    assert checkpoints.Checkpointer(workdir).latest_step() == cfg.train.num_steps
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["size"] == "T"


@pytest.mark.parametrize("name", ["inpaint", "universal", "udc", "edges2handbags"])
def test_full_configs_follow_the_paper(name):
    cfg = config(name, None)
    config_lib.validate(cfg)
    assert cfg.bridge.preset == "rdbm" and cfg.bridge.num_timesteps == 100
    assert cfg.sample.num_steps == 10
    assert cfg.bridge.theta_schedule == "cosine" and cfg.bridge.lam == pytest.approx(10 / 255)
    assert cfg.data.crop_size == 256 and cfg.optim.learning_rate == 1e-4
    for size in ("T", "B", "L"):
        assert config(name, size).model.size == size
    if name == "universal":
        assert set(cfg.data.tasks) == {"derain", "lowlight", "desnow", "dehaze", "deblur"}
        assert cfg.train.batch_size == 20 and cfg.train.num_steps == 500_000
        assert cfg.model.size == "L"


@pytest.mark.parametrize("name", ["demo", "inpaint", "universal", "udc", "edges2handbags"])
def test_every_task_config_takes_each_size_and_tiny(name):
    """README: `:T|S|B|L` picks the model size of every task config, `:tiny` (alone or with a
    size)."""
    for size in ("T", "S", "B", "L"):
        assert config(name, size).model.size == size
        assert config(name, f"{size},tiny").data.crop_size == 32
    with pytest.raises(ConfigError, match="unknown config argument 'XL'"):
        config(name, "XL")


def test_unknown_config_argument_rejected():
    with pytest.raises(ConfigError, match="unknown config argument 'XL'"):
        config("universal", "XL")
    assert list(config("udc", "poled").data.tasks) == ["poled"]


def test_universal_names_the_papers_datasets_and_overrides_reach_them(tmp_path):
    from ml_collections.config_flags import config_path  # what --config.a.b=… overrides go through
    cfg = config("universal", "tiny")
    config_lib.validate(cfg)
    evals = named_sources(cfg.data, "derain", "eval")
    assert [(s.name, s.label, s.cfg.lq_dir) for s in evals] == [
        ("rain100h", "derain/rain100h", "derain/Rain100H/test/LQ"),
        ("rain100l", "derain/rain100l", "derain/Rain100L/test/LQ")]
    assert all(s.cfg.eval_size == 32  # tiny
               for t in cfg.data.tasks for s in named_sources(cfg.data, t, "eval"))
    assert [s.key for s in named_sources(cfg.data, "derain", "train")] == [
        "data.tasks.derain.train.rain13k"]
    config_path.set_value("data.tasks.derain.eval.rain100l.lq_dir", cfg, "/data/Rain100L/rainy")
    assert named_sources(cfg.data, "derain", "eval")[1].cfg.lq_dir == "/data/Rain100L/rainy"
    config_path.set_value("data.tasks.dehaze.train.its.kind", cfg, "pairs")
    with pytest.raises(ConfigError,
                       match=r"^data\.tasks\.dehaze\.train\.its\.kind: must be one of"):
        config_lib.validate(cfg)
    with pytest.raises(ConfigError,
                       match=r"^data\.train_mix='random' is not one of 'size', 'equal'$"):
        config_lib.validate(config("universal", "tiny", **{"data.train_mix": "random"}))
    proc = run_cli("--config=configs/universal.py:tiny", f"--workdir={tmp_path}",
                   "--config.data.tasks.derain.eval.rain100l.kind=pairs")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("error:") and "data.tasks.derain.eval.rain100l.kind" in last, last


# Libraries a config file must never reach: it is plain data, read in well under a second.
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "grain", "clu", "tensorflow", "torch")
_LOAD_AND_LIST_MODULES = """
import sys
from rdbm_jax import config_files
config_files.load(sys.argv[1])
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py")))
def test_loading_a_config_file_imports_no_jax_library(name):
    path = os.path.join(CONFIGS, name)
    if name == "common.py":  # helpers, not a config: importing it must be just as light
        code = _LOAD_AND_LIST_MODULES.replace("config_files.load(sys.argv[1])",
                                              "config_files.sibling(sys.argv[1], 'common')")
    else:
        code = _LOAD_AND_LIST_MODULES
    # A fresh interpreter: nothing imported before.
    proc = subprocess.run([sys.executable, "-c", code, path], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    loaded = set(proc.stdout.split())
    assert "ml_collections" in loaded  # the check itself sees what was imported
    assert not loaded & set(HEAVY), f"configs/{name} imports {sorted(loaded & set(HEAVY))}"


@pytest.mark.parametrize("overrides, message", [
    # Rules that lived beside the code reading the key (pipeline, UNet, sampler, train loop, sweep).
    ({"data.crop_size": 36}, r"^data\.crop_size=36 must be a multiple of 8 \(the UNet's"),
    ({"data.prefetch_buffer": -1}, r"^data\.prefetch_buffer=-1 must be >= 0$"),
    ({"model.dropout": 1.0}, r"^model\.dropout=1\.0 must be in \[0, 1\)$"),
    ({"model.attention_impl": "cudnn"}, r"^model\.attention_impl='cudnn' needs model\.dtype"),
    ({"sample.eta": 1.5}, r"^sample\.eta=1\.5 must be in \[0, 1\]$"),
    ({"sweep.eta": "0,1.5"}, r"^sweep\.eta=1\.5 must be in \[0, 1\]$"),  # the rule of sample.eta
    ({"sweep.nfe": "2,0"}, r"^sweep\.nfe=0 must be > 0$"),
    ({"train.t_sampling": "small"},
     r"^train\.t_sampling='small' is not one of 'uniform', 'weighted', 'late'$"),
    ({"sweep.nfe": "2,500"}, r"^sweep\.nfe=500 exceeds bridge\.num_timesteps=100$"),
    # --mode=app's page: an address and a port it can bind, a step or -1 (the latest).
    ({"app.port": 0}, r"^app\.port=0 must be in 1\.\.65535$"),
    ({"app.port": 70000}, r"^app\.port=70000 must be in 1\.\.65535$"),
    ({"app.host": ""}, r"^app\.host='' must be a host name or address"),
    ({"app.host": "my host"}, r"^app\.host='my host' must be a host name or address"),
    ({"app.step": -2}, r"^app\.step=-2 must be a checkpoint step, or -1"),
    # fusion with π = x0 − μ (the demo's): η = 0 only, at every key that sets an η
    ({"sample.eta": 0.5}, r"^sample\.eta=0\.5 with sample\.fuse=True and π='residual': fusion "),
    ({"sample.first_step_eta": 1.0}, r"^sample\.first_step_eta=1 with sample\.fuse=True"),
    ({"sweep.eta": "0,1"}, r"^sweep\.eta=1 with sample\.fuse=True and π='residual'"),
    ({"bridge.pi": "abs", "sample.eta": 1.0}, r"^sample\.eta=1 with sample\.fuse=True and π='abs'"),
])
def test_config_rules_are_checked_by_validate(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(config(**overrides))


def test_a_saved_run_without_an_app_section_still_validates():
    """Runs saved before --mode=app existed have no `app` section: the API validates their
    config on every restore, so the section must stay optional there."""
    cfg = config()
    config_lib.validate(cfg)
    del cfg["app"]
    config_lib.validate(cfg)


def test_put_sets_dotted_keys_and_refuses_unknown_ones():
    """config.put: one helper for every dotted override of the experiments; a typo is a
    ConfigError naming the key, never a new key silently added."""
    cfg = config()
    out = config_lib.put(cfg, {"sample.eta": 1.0, "data.tasks.main.eval.eval_size": 48})
    assert out is cfg and cfg.sample.eta == 1.0 and cfg.data.tasks.main.eval.eval_size == 48
    for key in ("sample.etta", "samples.eta", "sample.eta.x", "nothing"):
        with pytest.raises(ConfigError, match=f"^{key}: no such config key$"):
            config_lib.put(cfg, {key: 1})
    assert "etta" not in cfg.sample


def test_stochastic_steps_are_allowed_without_fusion_or_with_a_pi_that_reads_rho():
    """The fused-η rule refuses only what it must: η > 0 stays open without fusion, and with
    π = 1, where fusion's weight Θρ²/(Θ²ρ² + Σ²) shrinks with sample.fuse_sigma."""
    for overrides in ({"sample.eta": 1.0, "sample.fuse": False, "sweep.eta": "0,1"},
                      {"sample.eta": 1.0, "bridge.pi": "one", "sample.first_step_eta": 1.0},
                      {"sample.eta": 0.0, "sweep.eta": "0"}):
        config_lib.validate(config(**overrides))
    assert not config_lib.stochastic_steps_allowed(config())  # the demo: fused, π = x0 − μ
    assert config_lib.stochastic_steps_allowed(config(**{"sample.fuse": False}))
    assert config_lib.stochastic_steps_allowed(config(**{"bridge.pi": "one"}))


def test_a_run_saved_before_the_fused_eta_rule_still_loads_at_eta_0(caplog):
    """A fused run saved with η values above 0 (the demo's former sweep.eta="0,1", or a chosen
    sample.eta) is not refused as damaged: those sampling defaults become 0, one warning naming
    them; an unfused run keeps its η; a damaged η is still named by validate."""
    saved = config(**{"sweep.eta": "0,1", "sample.eta": 1.0}).to_dict()
    with caplog.at_level("WARNING", logger="rdbm_jax"):
        cfg = config_lib.check_saved(saved, "RUN/checkpoints/2/config")
    assert (cfg.sweep.eta, cfg.sample.eta, cfg.sample.first_step_eta) == ("0", 0.0, 0.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["checkpoint config RUN/checkpoints/2/config: sample.eta=1, "
                        "sweep.eta='0,1' taken as 0 (this model fuses x̂0 by x_t, which refuses "
                        "stochastic steps: docs/sampling.md)"]
    assert saved["sweep"]["eta"] == "0,1"  # the saved record itself is not changed
    unfused = config(**{"sweep.eta": "0,1", "sample.eta": 1.0, "sample.fuse": False}).to_dict()
    cfg = config_lib.check_saved(unfused, "RUN/checkpoints/2/config")
    assert (cfg.sweep.eta, cfg.sample.eta) == ("0,1", 1.0)
    damaged = config(**{"sample.eta": 1.5}).to_dict()
    with pytest.raises(ConfigError, match=r"sample\.eta=1\.5 must be in \[0, 1\]"):
        config_lib.check_saved(damaged, "RUN/checkpoints/2/config")
