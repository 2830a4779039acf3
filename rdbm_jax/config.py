"""Config validation: every bad value becomes a one-line ConfigError naming its key."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import ml_collections

from rdbm_jax import conditioning, models, older_runs, program, schedules, sde, train_state
from rdbm_jax.evaluation import metrics
from rdbm_jax.runtime import writers
from rdbm_jax.data import spec as data_spec
from rdbm_jax.errors import ConfigError
from rdbm_jax.evaluation.perceptual import lpips

log = logging.getLogger("rdbm_jax")


def _choices() -> dict[str, tuple[str, ...]]:
    """Every key with a fixed set of values → that set, read from the module that owns it."""
    return {
        "model.size": tuple(models.SIZES),
        "model.dtype": models.DTYPES,
        "model.param_dtype": models.PARAM_DTYPES,
        "model.attention_impl": tuple(models.ATTENTION_IMPLS),
        "model.condition": conditioning.CONDITIONS,
        "bridge.preset": schedules.PRESETS,
        "bridge.theta_schedule": schedules.THETA_SCHEDULES,
        "bridge.pi": ("",) + schedules.PI_MODES,  # "" = the preset's own π
        "bridge.parameterization": sde.PARAMETERIZATIONS,
        "bridge.discretization": schedules.DISCRETIZATIONS,
        "optim.optimizer": train_state.OPTIMIZERS,
        "optim.schedule": train_state.LR_SCHEDULES,
        "optim.ema_warmup": train_state.EMA_WARMUPS,
        "train.loss": program.LOSSES,
        "train.t_sampling": program.T_SAMPLINGS,
        "train.tensorboard": writers.WRITERS,
        "data.flip": data_spec.FLIPS,
        "data.train_mix": data_spec.TRAIN_MIXES,
        "eval.color": metrics.COLORS,
        "eval.ssim_window": metrics.SSIM_WINDOWS,
        "eval.quantize": metrics.QUANTIZE_MODES,
        "eval.lpips_net": lpips.NETS,
    }


CHOICES: dict[str, tuple[str, ...]] = _choices()

_positive = (lambda v: v > 0, "must be > 0")
_unit = (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
_non_negative = (lambda v: v >= 0, "must be >= 0")
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bridge.num_timesteps": (lambda v: v >= 2, "must be >= 2"),
    "bridge.lam": _positive,
    "optim.learning_rate": _positive,
    "optim.weight_decay": _non_negative,
    "optim.warmup_steps": _non_negative,
    "optim.grad_clip": _non_negative,
    "optim.ema_decay": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "optim.min_lr_ratio": _unit,
    "train.num_steps": _non_negative,
    "train.batch_size": _positive,
    "train.log_every": _positive,
    "train.eval_every": _non_negative,
    "train.eval_num_images": _non_negative,
    "train.checkpoint_every": _positive,
    "train.max_to_keep": _positive,
    "train.steps_per_dispatch": _positive,
    "sample.num_steps": _positive,
    "sample.eta": _unit,
    "sample.first_step_eta": _unit,
    "sample.batch_size": _positive,
    "sample.tile_size": _non_negative,
    "sample.tile_overlap": _non_negative,
    "sample.hole_threshold": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "data.max_image_pixels": _positive,
    "eval.crop_border": _non_negative,
    "eval.max_images": _non_negative,
    "data.crop_size": _positive,
    "data.num_workers": (lambda v: v >= -1, "must be >= 0, or -1 (auto)"),
    "data.prefetch_buffer": _non_negative,
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "data.crops_per_image": _positive,
    "data.scale_min": (lambda v: v > 0, "must be > 0"),
    "data.scale_max": (lambda v: v > 0, "must be > 0"),
    "data.decode_cache_mib": _non_negative,
}


def get(cfg: ml_collections.ConfigDict, key: str) -> Any:
    """Look up a dotted key, e.g. get(cfg, "bridge.lam")."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def put(cfg: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted keys in place, e.g. put(cfg, {"sample.eta": 1.0}); returns `cfg`. A key the
    config lacks is a ConfigError naming it (a typo must not train a different recipe)."""
    for key, value in values.items():
        *path, name = key.split(".")
        try:
            node = get(cfg, ".".join(path)) if path else cfg
        except (KeyError, AttributeError, TypeError):
            node = None
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ConfigError(f"{key}: no such config key")
        node[name] = value
    return cfg


def parse_list(cfg: ml_collections.ConfigDict, key: str, cast: Callable[[str], Any]) -> list:
    """A comma-separated config string as a list (e.g. sweep.nfe = "2,5,10")."""
    raw = get(cfg, key)
    try:
        return [cast(x.strip()) for x in str(raw).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a comma-separated list of {cast.__name__}"
                          ) from None


def _pi_mode(bridge: ml_collections.ConfigDict) -> str:
    """The π mode a bridge section trains and samples with: bridge.pi, else its preset's."""
    return bridge.pi or schedules.DEFAULT_PI[bridge.preset]


def _validate_bridge(bridge: ml_collections.ConfigDict) -> None:
    """Combinations of bridge keys that cannot train a meaningful model, refused in one line."""
    try:
        schedules.check_discretization(bridge.discretization, bridge.preset, bridge.theta_schedule)
    except ValueError as e:
        raise ConfigError(f"bridge.discretization: {e}") from None
    pi = _pi_mode(bridge)
    noise_target = sde.PARAMETERIZATIONS[bridge.parameterization].target_is_noise
    if noise_target and (bridge.preset == "flow" or pi == "zero"):
        raise ConfigError(f"bridge.parameterization={bridge.parameterization!r} with "
                          f"bridge.preset={bridge.preset!r} "
                          f"and bridge.pi={pi!r}: the target π⊙ε is identically 0 (no noise), so "
                          "the network would learn nothing; use bridge.parameterization='x0'")


def _validate_model(cfg: ml_collections.ConfigDict) -> None:
    """Rules tying the network to the rest: fused attention's dtypes, sizes the UNet can take
    (crops, mixed crop sizes, tiles), the multi-scale range."""
    if cfg.model.attention_impl == "cudnn" and cfg.model.dtype == "float32":
        raise ConfigError("model.attention_impl='cudnn' needs model.dtype bfloat16 or float16, "
                          "not float32")
    factor = models.downsample_factor(cfg.model)
    if cfg.data.crop_size % factor:
        raise ConfigError(f"data.crop_size={cfg.data.crop_size} must be a multiple of {factor} "
                          "(the UNet's downsampling factor)")
    if cfg.data.scale_min > cfg.data.scale_max:
        raise ConfigError(f"data.scale_min={cfg.data.scale_min} must be <= "
                          f"data.scale_max={cfg.data.scale_max}")
    for size in parse_list(cfg, "data.crop_sizes", int):
        if size <= 0 or size > cfg.data.crop_size or size % factor:
            raise ConfigError(f"data.crop_sizes: {size} must be in (0, data.crop_size="
                              f"{cfg.data.crop_size}] and a multiple of {factor} (the UNet's "
                              "downsampling factor)")
    if cfg.data.crop_sizes and cfg.train.steps_per_dispatch != 1:
        raise ConfigError(f"data.crop_sizes={cfg.data.crop_sizes!r} needs "
                          f"train.steps_per_dispatch=1 (got {cfg.train.steps_per_dispatch}): "
                          "one compiled call stacks batches of one shape")
    if cfg.sample.tile_size % factor:
        raise ConfigError(f"sample.tile_size={cfg.sample.tile_size} must be a multiple of {factor} "
                          "(the UNet's downsampling factor)")


def _check_range(key: str, value: Any, rule_of: str) -> None:
    """`value` of `key` against the RANGES rule of the key `rule_of`."""
    ok, what = RANGES[rule_of]
    try:
        good = bool(ok(value))
    except TypeError:  # a value of the wrong type (a damaged saved config's "100" for 100)
        good = False
    if not good:
        raise ConfigError(f"{key}={value!r} {what}")


def _check_num_steps(cfg: ml_collections.ConfigDict, key: str, num_steps: int) -> None:
    """A number of sampling steps (NFE) fits in the bridge's discretisation."""
    if num_steps > cfg.bridge.num_timesteps:
        raise ConfigError(f"{key}={num_steps} exceeds "
                          f"bridge.num_timesteps={cfg.bridge.num_timesteps}")


def _validate_app(cfg: ml_collections.ConfigDict) -> None:
    """The `app` section (--mode=app); a run saved before it existed has none and needs none."""
    if "app" not in cfg:
        return
    app = cfg.app
    if not isinstance(app.host, str) or not app.host.strip() or any(c.isspace() for c in app.host):
        raise ConfigError(f"app.host={app.host!r} must be a host name or address, e.g. 127.0.0.1")
    if not 1 <= app.port <= 65535:
        raise ConfigError(f"app.port={app.port!r} must be in 1..65535")
    if app.step < -1:
        raise ConfigError(f"app.step={app.step!r} must be a checkpoint step, or -1 (the latest)")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Check choices and ranges of every known key; raise ConfigError naming the first bad one."""
    cfg = older_runs.upgrade(cfg)  # an older run's saved config: its missing keys as they behaved
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            listed = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{key}={value!r} is not one of {listed}")
    for key in RANGES:
        _check_range(key, get(cfg, key), key)
    _validate_bridge(cfg.bridge)
    _validate_model(cfg)
    _check_num_steps(cfg, "sample.num_steps", cfg.sample.num_steps)
    if cfg.sample.tile_size and cfg.sample.tile_overlap * 2 >= cfg.sample.tile_size:
        raise ConfigError(f"sample.tile_overlap={cfg.sample.tile_overlap} must be < half of "
                          f"sample.tile_size={cfg.sample.tile_size}")
    if not cfg.data.tasks:
        raise ConfigError("data.tasks is empty: a config must define at least one task")
    data_spec.validate_tasks(cfg.data)
    fuse = bool(cfg.sample.fuse)
    if fuse and not sde.PARAMETERIZATIONS[cfg.bridge.parameterization].fusable:
        raise ConfigError(f"sample.fuse=True needs bridge.parameterization in "
                          f"{', '.join(sde.fusable_names())}; "
                          f"{cfg.bridge.parameterization!r} already "
                          "reads x̂0 off x_t (add --config.sample.fuse=False)")
    # ρ for every task of every use that reads one, each > 0 (`program.rho_table`)
    program.rho_table(cfg, "network")
    if cfg.eval.per_step or fuse:
        program.rho_table(cfg, "prior")
    program.rho_table(cfg, "sample")
    unknown = sorted(set(parse_list(cfg, "eval.metrics", str)) - set(metrics.EVAL_METRICS))
    if unknown:
        raise ConfigError(f"eval.metrics: unknown metric(s) {', '.join(unknown)} "
                          f"(choose from {', '.join(metrics.EVAL_METRICS)})")
    # A sweep's settings obey the rules of the sample.* keys they stand in for.
    for nfe in parse_list(cfg, "sweep.nfe", int):
        _check_range("sweep.nfe", nfe, "sample.num_steps")
        _check_num_steps(cfg, "sweep.nfe", nfe)
    for eta in parse_list(cfg, "sweep.eta", float):
        _check_range("sweep.eta", eta, "sample.eta")
    _check_fused_steps(cfg)
    _validate_app(cfg)


def stochastic_steps_allowed(cfg: ml_collections.ConfigDict) -> bool:
    """Whether η > 0 may be sampled with: not with fusion under π = x0 − μ (or |x0 − μ|), whose
    weight Θ/(Θ² + Σ²) does not depend on ρ and so carries a stochastic step's noise into x̂0
    (measured: the 4 folds' networks fall from 19–20 dB to 13.4 at NFE 2 and 8 at NFE 10,
    docs/sampling.md)."""
    return not (cfg.sample.fuse and _pi_mode(cfg.bridge) in sde.PI_SCALED_BY_RESIDUAL)


def _check_fused_steps(cfg: ml_collections.ConfigDict) -> None:
    """Refuse (ConfigError naming the key) any η > 0 that `stochastic_steps_allowed` rules out."""
    if stochastic_steps_allowed(cfg):
        return
    pi = _pi_mode(cfg.bridge)
    etas = [("sample.eta", float(cfg.sample.eta)),
            ("sample.first_step_eta", float(cfg.sample.first_step_eta))]
    etas += [("sweep.eta", eta) for eta in parse_list(cfg, "sweep.eta", float)]
    for key, eta in etas:
        if eta > 0:
            raise ConfigError(f"{key}={eta:g} with sample.fuse=True and π={pi!r}: fusion passes a "
                              "stochastic step's noise into x̂0 (docs/sampling.md); use η = 0 or "
                              "--config.sample.fuse=False")


def _sample_saved_run_at_eta_0(cfg: ml_collections.ConfigDict, where: str) -> None:
    """A run saved before fusion refused stochastic steps (`stochastic_steps_allowed`) keeps
    loading: its saved η values above 0 — sampling defaults only (every call and mode may set
    its own), such as the demo's former sweep.eta="0,1" — become 0, with one warning naming
    them, rather than the saved config being refused as damaged."""
    try:
        if stochastic_steps_allowed(cfg):
            return
        saved = {key: float(get(cfg, key)) for key in ("sample.eta", "sample.first_step_eta")}
        etas = parse_list(cfg, "sweep.eta", float)
    except (KeyError, AttributeError, TypeError, ValueError, ConfigError):
        return  # a damaged value: `validate` names it
    if not all(0 <= eta <= 1 for eta in (*saved.values(), *etas)):
        return  # outside η's range: damaged, and `validate` names it
    changed = []
    for key, eta in saved.items():
        if eta > 0:
            changed.append(f"{key}={eta:g}")
            put(cfg, {key: 0.0})
    if any(eta > 0 for eta in etas):
        changed.append(f"sweep.eta={cfg.sweep.eta!r}")
        cfg.sweep.eta = "0"
    if changed:
        log.warning("checkpoint config %s: %s taken as 0 (this model fuses x̂0 by x_t, which "
                    "refuses stochastic steps: docs/sampling.md)", where, ", ".join(changed))


def check_saved(saved: dict, where: str) -> ml_collections.ConfigDict:
    """A checkpoint's saved config as a ConfigDict checked by `validate`: a damaged or crafted one
    (a size of 5, a number saved as a string) is one ConfigError naming the file and the key."""
    try:
        # an older version's config: the keys added since filled in as those runs behaved
        cfg = older_runs.upgrade(ml_collections.ConfigDict(saved))
        _sample_saved_run_at_eta_0(cfg, where)
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"checkpoint config {where}: {e} (the saved config is damaged or not "
                          "rdbm_jax's)") from None
    except (KeyError, AttributeError) as e:
        key = str(e.args[0] if e.args else e).splitlines()[0]  # ml_collections adds "Did you mean"
        raise ConfigError(f"checkpoint config {where}: no key {key} (a config of another rdbm_jax "
                          "version, or damaged)") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"checkpoint config {where}: a value of the wrong type ({e})") from None
    return cfg
