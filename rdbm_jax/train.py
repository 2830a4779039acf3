"""The training loop: batches in, the compiled step (`program.py`), logs, validation, orbax
checkpoints."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import textwrap
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from rdbm_jax.checkpointing import checkpoints
from rdbm_jax import config as config_lib, data, models, older_runs, program
from rdbm_jax.runtime import curves, distributed
from rdbm_jax.runtime import memory, paths, strict_json, workdir_lock, writers
from rdbm_jax.checkpointing import resume
from rdbm_jax.data import spec as data_spec
from rdbm_jax.errors import ConfigError, TrainingError
from rdbm_jax.train_state import TrainState, learning_rate_schedule
from rdbm_jax.evaluation.validation import Validator

log = logging.getLogger("rdbm_jax")


def prepare_workdir(workdir: str) -> None:
    """Create `workdir` and check that it is writable (one-line TrainingError otherwise)."""
    if paths.is_remote(workdir):  # gs:// and friends: no folders to create, written through epath
        paths.check_backend(workdir, "--workdir")  # its package missing: one line, not a traceback
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise TrainingError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and exits 0."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def should_stop(self) -> bool:
        """Whether any process has received a stop signal (a host collective when multi-process)."""
        return distributed.any_process(self.signal is not None)


def _next_batches(it: Any, k: int) -> dict[str, np.ndarray]:
    """Stack k consecutive local batches along a new leading axis (one compiled call runs k
    steps)."""
    batches = [next(it) for _ in range(k)]
    return {name: np.stack([b[name] for b in batches]) for name in ("x0", "mu", "mask")}


@contextlib.contextmanager
def hold_workdir(workdir: str) -> Iterator[None]:
    """The workdir lock, taken by process 0 for the whole run; every process stops if it is busy."""
    lock = workdir_lock.WorkdirLock(workdir)
    error = ""
    if distributed.is_main_process():
        try:
            lock.acquire()
        except TrainingError as e:
            error = str(e)
    if distributed.any_process(bool(error)) and not error:  # only process 0 takes the lock
        error = f"workdir {workdir} is in use by another training run (see process 0's error)"
    if error:
        raise TrainingError(error)
    try:
        yield
    finally:
        lock.release()


def check_config(cfg: ml_collections.ConfigDict, mesh: Any) -> None:
    """What training needs beyond `config.validate`, checked before the workdir is created: shapes
    that fit the UNet and the devices, and the data folders (ConfigError naming the key)."""
    unit = math.lcm(mesh.size, len(cfg.data.tasks) * jax.process_count())
    if cfg.train.batch_size % unit:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of {unit} = lcm("
            f"{mesh.size} devices, {len(cfg.data.tasks)} tasks x {jax.process_count()} "
            f"processes), e.g. {unit * max(1, round(cfg.train.batch_size / unit))}")
    data_spec.check_folders(cfg.data, ("train", "eval") if cfg.train.eval_every else ("train",))
    check_batch_memory(cfg)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                       hooks: Sequence[Callable[[int, TrainState], None]] = ()) -> dict[str, float]:
    """Train per `cfg` in `workdir`, resuming from its newest readable checkpoint; returns the last
    metrics.

    Holds the workdir lock throughout. `hooks` are called as hook(step, state) after every dispatch
    (and after its checkpoint).
    """
    config_lib.validate(cfg)
    check_config(cfg, distributed.make_mesh())  # a config error leaves no workdir behind
    prepare_workdir(workdir)
    with hold_workdir(workdir):
        try:
            return _train(cfg, workdir, hooks)
        except _StoppedEarly as e:  # nothing trained yet, so nothing to save
            log.info("signal %d while %s: stopped before the first step (nothing to save)",
                     e.signum, e.during)
            return {}


class _StoppedEarly(Exception):
    """A stop signal before training started."""

    def __init__(self, signum: int, during: str):
        super().__init__(signum, during)
        self.signum = signum
        self.during = during


@contextlib.contextmanager
def _stop_raises(during: str) -> Iterator[None]:
    """SIGTERM/SIGINT interrupt this block at once (raising _StoppedEarly): before the loop there
    is no step boundary to stop at, and a pipeline build could outlive the signal by minutes."""
    def handle(signum, frame):
        del frame
        raise _StoppedEarly(signum, during)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, handle)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def check_batch_memory(cfg: ml_collections.ConfigDict) -> None:
    """Refuse (one line naming train.batch_size) a batch whose host buffers alone would not fit:
    x0, μ and mask of every batch the pipeline holds at once (its prefetch buffers, the one being
    stacked and the K of a dispatch)."""
    crop, batch = cfg.data.crop_size, cfg.train.batch_size
    per_batch = batch * crop * crop * (3 + 3 + 1) * 4  # float32 x0, mu, mask
    buffered = max(1, cfg.data.prefetch_buffer) * max(1, cfg.data.num_workers)
    held = buffered + 1 + cfg.train.steps_per_dispatch
    need, have = per_batch * held, memory.host_available()
    if need > have:
        raise ConfigError(f"train.batch_size={batch}: {held} batches of {crop}x{crop} crops need "
                          f"~{memory.gib(need)} of host memory, {memory.gib(have)} is available; "
                          f"lower train.batch_size (at most ~{max(1, batch * have // need)})")


def _train(cfg: ml_collections.ConfigDict, workdir: str,
           hooks: Sequence[Callable[[int, TrainState], None]]) -> dict[str, float]:
    """The body of `train_and_evaluate`, run while the workdir lock is held."""
    config_json = json.loads(cfg.to_json_best_effort())
    check_resume_config(workdir, config_json)  # before anything is built, moved or written
    program.use_compilation_cache(cfg.train.compilation_cache_dir)
    mesh = distributed.make_mesh()
    is_main = distributed.is_main_process()
    prog = program.program(cfg, mesh)
    data.set_max_pixels(cfg.data.max_image_pixels)
    with _stop_raises("building the input pipeline"):  # can take minutes on a large data set
        train_iter = data.build_train_iterator(cfg.data, global_batch_size=cfg.train.batch_size,
                                               seed=cfg.seed,
                                               accelerator=jax.default_backend() != "cpu")
        eval_sources = (data.build_eval_sources(cfg.data, max_images=cfg.train.eval_num_images)
                        if cfg.train.eval_every else {})
    ckpt = checkpoints.Checkpointer(workdir, cfg.train.max_to_keep)
    start, state = ckpt.restore_latest(prog.abstract, train_iter)
    if start:
        log.info("resumed from %s at step %d", ckpt.directory, start)
    else:
        state = prog.init(program.init_key(cfg.seed))
    if is_main:
        log.info("model %s: %.3f M parameters on %d device(s) (%s)", cfg.model.size,
                 models.count_params(state.params) / 1e6, mesh.size, jax.devices()[0].platform)

    writer = writers.create_writer(workdir, is_main, cfg.train.tensorboard, resume_step=start)
    if is_main and not start:
        paths.write_text(paths.join(workdir, "config.json"),
                         strict_json.dumps(config_json, indent=2))
        # The resolved config in TensorBoard's text tab (indented: Markdown shows it verbatim).
        writer.write_texts(0,
                           {"config": textwrap.indent(json.dumps(config_json, indent=2), "    ")})
    validator = Validator(cfg, mesh, eval_sources) if eval_sources else None
    lr_schedule = learning_rate_schedule(cfg.optim, cfg.train.num_steps)
    # seed + 1: the training noise is a stream of its own (seed itself keys the parameter
    # initialisation and every evaluation's sampling noise).
    key = jax.random.PRNGKey(cfg.seed + 1)
    total = cfg.train.num_steps
    k = cfg.train.steps_per_dispatch
    step = start
    last = {}
    acc = None  # the metrics accumulated since the last log line (on device)
    pending = []  # dispatched steps whose finiteness flags are not read yet
    t_log = time.time()
    s_log = step
    waited = 0.0  # seconds spent waiting for the input pipeline since the last log line

    def check_finite():
        _raise_if_nonfinite(pending, ckpt)
        pending.clear()

    def save(at: int):
        check_finite()
        if ckpt.latest_step() != at:  # a stop signal right after a periodic save: nothing new
            ckpt.save(at, state, train_iter, config_json)

    with _StopFlag() as stop:
        try:
            while step < total:
                n = min(k, total - step)
                t_wait = time.perf_counter()
                local = _next_batches(train_iter, n)
                waited += time.perf_counter() - t_wait
                batches = distributed.global_batch(mesh, local, leading=1)
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    state, m, finite = prog.step(state, batches, key)
                pending.append((step, finite))
                acc = m if acc is None else acc.merge(m)
                step += n
                if len(pending) > 1:  # check the previous dispatch while this one runs
                    _raise_if_nonfinite(pending[:-1], ckpt)
                    del pending[:-1]
                if step % cfg.train.log_every < n or step == total:
                    check_finite()
                    now = time.time()
                    rate = (step - s_log) / max(now - t_log, 1e-9)
                    last = {f"train/{k_}": float(v) for k_, v in acc.compute().items()}
                    last.update({
                        "steps_per_sec": rate,
                        "images_per_sec": rate * cfg.train.batch_size,
                        "eta_minutes": (total - step) / max(rate, 1e-9) / 60.0,
                        "learning_rate": float(lr_schedule(step)),
                        # Near 1: input-bound (data.num_workers, crops_per_image, cache).
                        "data_wait_fraction": min(1.0, waited / max(now - t_log, 1e-9))
                    })
                    writer.write_scalars(step, last)
                    acc = None
                    t_log = now
                    s_log = step
                    waited = 0.0
                if validator and (step % cfg.train.eval_every < n or step == total):
                    check_finite()
                    scores, grid = validator(state.ema_params, step)
                    writer.write_scalars(step, scores)
                    writer.write_images(step, {"grid": grid})
                    if is_main:
                        # workdir/curves.png: loss and validation PSNR so far
                        curves.refresh(workdir)
                    last.update(scores)
                if step % cfg.train.checkpoint_every < n or step == total:
                    save(step)
                for hook in hooks:
                    hook(step, state)
                # Multi-process: agree on stopping at log steps only (one host collective, not every
                # step).
                at_log_step = step % cfg.train.log_every < n
                if (jax.process_count() == 1 or at_log_step) and stop.should_stop():
                    log.info("signal %s: saving a checkpoint at step %d and exiting",
                             stop.signal, step)
                    save(step)
                    break
        finally:
            ckpt.wait()
            writer.flush()
    ckpt.close()
    writer.close()
    log.info("finished at step %d; parameter checksum %.12e", step, param_checksum(state.params))
    return last


def check_resume_config(workdir: str, config_json: dict) -> None:
    """Refuse (one-line ConfigError) to resume the newest checkpoint whose config reads with a
    config that differs in a key outside `resume.RESUMABLE`: a changed config is not damage."""
    directory = checkpoints.checkpoint_dir(workdir)
    for step in checkpoints.complete_steps(directory):
        try:
            saved = checkpoints.read_config(directory, step)
        except ConfigError:  # an unreadable config: restore_latest reports that checkpoint
            continue
        resume.check(_upgraded(saved), config_json, os.path.join(directory, str(step)), workdir)
        return


def _upgraded(saved: dict) -> dict:
    """An older version's saved config with the keys added since as that run behaved, so that
    they are compared too (a run trained on μ alone resumed with a mask condition is refused)."""
    try:
        return older_runs.upgrade(ml_collections.ConfigDict(saved)).to_dict()
    except (KeyError, AttributeError, TypeError, ValueError):
        return saved  # a damaged config is compared as saved; restoring reports it


def param_checksum(params: Any) -> float:
    """Σ|θ| over all parameters (float64): equal on every process of a healthy data-parallel run."""
    return float(sum(np.abs(distributed.to_host(x).astype(np.float64)).sum()
                     for x in jax.tree_util.tree_leaves(params)))


def _raise_if_nonfinite(pending: list, ckpt: checkpoints.Checkpointer) -> None:
    """Raise a TrainingError naming the first non-finite step among dispatched (start, flags)
    pairs."""
    for first_step, flags in pending:
        flags = np.asarray(jax.device_get(flags))
        if not flags.all():
            bad = first_step + int(np.argmin(flags)) + 1
            raise TrainingError(
                f"non-finite loss or gradient at step {bad}; stopped (last good "
                f"checkpoint: step {ckpt.latest_step() or 'none'} in {ckpt.directory})")
