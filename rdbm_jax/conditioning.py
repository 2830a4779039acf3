"""What the network is conditioned on besides x_t and t: μ alone (the paper) or μ with the
degradation mask.

Pure JAX (no Flax). The mask is float [..., H, W, 1], 1 where μ may differ from x0 (the holes of
inpainting; every pixel for other degradations). Conditions:

- `mu` — the paper: the network sees [x_t, μ] only.
- `mu_mask` — a documented deviation for tasks whose degradation mask is known (inpainting):
  the network sees [x_t, μ, mask], and x̂0 is set to μ outside the mask at every step of training
  and sampling (`sde.project_known`), so known pixels come back exactly.
- `mu_mask_fill` — as `mu_mask`, plus the holes of μ pre-filled by a harmonic interpolation of the
  known pixels (`fill_holes`, solved coarse to fine) as three more channels. With the residual
  parameterisation the network's output is also added to the pre-fill's residual (`fill_residual`):
  a zero output restores the pre-fill, and the network learns the correction on top of it.
- `mu_mask_bifill` — as `mu_mask_fill` with a biharmonic pre-fill (`fill_holes_biharmonic`: the
  harmonic fill refined by conjugate gradients on Δ²u = 0 in the holes), the classical inpainting
  the demo is compared with (scikit-image's `inpaint_biharmonic`), so a zero network starts there.
- `mu_mask_mixfill` — as `mu_mask_fill` with the average of the harmonic and biharmonic fills
  (`fill_holes_mixed`).

The conditions are `PREFILLS` (a pre-fill function per filled condition) plus the two unfilled
ones; a new pre-fill is one entry there.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FILL_LEVELS = 10  # pyramid levels of the coarse-to-fine fill (a 1024-px image reaches 1×1)
FILL_SWEEPS = 60  # Jacobi sweeps per pyramid level
# Conjugate-gradient iterations of the biharmonic refinement. Measured on the tune photo
# (astronaut) against scikit-image's inpaint_biharmonic, rms difference inside the holes
# ([-1, 1] units): 128 px 0.034 / 0.020 / 0.015 / 0.015 at 50 / 100 / 200 / 400 iterations (the
# remainder is the stencil at the image border); 512 px, larger holes: 0.17 / 0.15 / 0.11 at
# 100 / 200 / 400 (not converged). Inside the holes of the 3 val photos at 512 px, PSNR against
# the photos: 20.74 dB at 200 iterations, 20.44 at 1 000, scikit-image's 20.00 (harmonic: 20.86).
BIFILL_ITERATIONS = 200
# `mu_mask_mixfill`'s share of the harmonic fill: the plain average of the two classical fills,
# fixed before any fold was scored with a network (not tuned). Measured: the fills alone in
# experiments/results/prefills, with a network in docs/recipes_epyc.md.
MIX_WEIGHT = 0.5
# Hole inference (`infer_mask`): JPEG leaves the white fill at 250–255 inside and blurs its rims;
# measured on strokes over the built-in photos at quality 75–95 (tests/test_hole_inference.py).
HOLE_THRESHOLD = 0.98  # default of sample.hole_threshold: a seed pixel is >= this in every channel
HOLE_GROW_LEVEL = 0.8  # seeds grow into pixels at least this white (compression rims) ...
HOLE_GROW_STEPS = 3  # ... by at most this many pixels (so real bright areas beside a hole stay out)
# An exact (lossless) fill is taken as is: pixels at 255 in every channel, nothing grown. It is told
# from a compressed one by the pixels bordering the pure-white ones: photo content (measured: <= 25
# % at least 0.9 white on the built-in photos) or compression rims (>= 85 %).
HOLE_RIM_LEVEL, LOSSLESS_RIM_SHARE = 0.9, 0.5
PURE_WHITE = 1.0 - 0.5 / 255  # [0, 1] units: rounds to 255
# the inpainting fill in model range [-1, 1] (white; rdbm_jax.data.masks.HOLE_VALUE)
FILL_VALUE = 1.0


def check_condition(kind: str) -> None:
    """Reject an unknown condition."""
    if kind not in CONDITIONS:
        raise ValueError(f"condition={kind!r} is not one of {', '.join(CONDITIONS)}")


def uses_mask(kind: str) -> bool:
    """Whether the condition needs the degradation mask (and projects x̂0 onto μ outside it)."""
    check_condition(kind)
    return kind != "mu"


def condition_channels(kind: str, image_channels: int = 3) -> int:
    """Channels of the condition tensor built by `condition`."""
    check_condition(kind)
    if kind == "mu":
        return image_channels
    # [μ, mask] and, with a pre-fill, the filled image
    return image_channels + 1 + (image_channels if kind in FILLED else 0)


def _pool2(x: jax.Array) -> jax.Array:
    """2×2 sum pooling of [B, H, W, C]; an odd side gets one zero row/column (symbolic shapes
    work)."""
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")


def _relax(value: jax.Array, free: jax.Array, sweeps: int) -> jax.Array:
    """`sweeps` Jacobi sweeps of the Laplace equation on the `free` pixels (4-neighbour averages,
    edge-replicated border); the other pixels are held fixed."""
    def sweep(_, x):
        p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        avg = 0.25 * (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:])
        return jnp.where(free, avg, x)

    return jax.lax.fori_loop(0, sweeps, sweep, value)


def fill_holes(mu: jax.Array, mask: jax.Array) -> jax.Array:
    """μ with the masked pixels replaced by a harmonic (Laplace) interpolation of the known ones.

    [B, H, W, C] → [B, H, W, C], solved coarse to fine (a multigrid-style cascade, so the cost does
    not grow with the hole size): pull = FILL_LEVELS levels of mask-weighted 2×2 sums (odd sides
    padded with zero weight); push = from the coarsest level down, blocks with known pixels keep
    their known average blended by the known fraction with the level below repeated 2×, and blocks
    with none are relaxed by FILL_SWEEPS Jacobi sweeps. Known pixels are unchanged. Shapes never
    enter Python control flow, so this traces for `jax.export`'s symbolic H, W.
    """
    known = 1.0 - jnp.asarray(mask, jnp.float32)
    mu = jnp.asarray(mu, jnp.float32)
    nums, dens = [mu * known], [known]
    for _ in range(FILL_LEVELS):
        nums.append(_pool2(nums[-1]))
        dens.append(_pool2(dens[-1]))
    value = nums[-1] / jnp.maximum(dens[-1], 1e-8)
    for level in range(FILL_LEVELS - 1, -1, -1):
        num, den = nums[level], dens[level]
        up = jnp.repeat(jnp.repeat(value, 2, axis=1), 2, axis=2)[:, :num.shape[1], :num.shape[2]]
        cover = jnp.clip(den * (4.0 ** -level), 0.0, 1.0)  # known fraction of the block
        value = _relax(cover * num / jnp.maximum(den, 1e-8) + (1.0 - cover) * up, den <= 0,
                       FILL_SWEEPS)
    return jnp.where(known > 0, mu, value)


def _laplacian(u: jax.Array) -> jax.Array:
    """The 5-point Laplacian of [B, H, W, C] with edge-replicated borders (Neumann: a symmetric
    operator, so Δ² = ΔΔ is symmetric positive semi-definite, as conjugate gradients need)."""
    p = jnp.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4.0 * u


def fill_holes_biharmonic(mu: jax.Array, mask: jax.Array,
                          iterations: int = BIFILL_ITERATIONS) -> jax.Array:
    """μ with the masked pixels replaced by the biharmonic interpolation of the known ones.

    Solves P Δ² P u = −P Δ² (1 − P) μ (P: the holes) by `iterations` conjugate-gradient steps per
    image and channel, started from the harmonic `fill_holes`; a fixed count, so the cost is known
    and the function traces for symbolic H, W. Known pixels are unchanged.
    """
    return _biharmonic_from(mu, mask, fill_holes(mu, mask), iterations)


def _biharmonic_from(mu: jax.Array, mask: jax.Array, start: jax.Array,
                     iterations: int) -> jax.Array:
    """`fill_holes_biharmonic`'s conjugate gradients, started from the filled image `start`."""
    mu = jnp.asarray(mu, jnp.float32)
    hole = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), mu.shape)
    dot = lambda a, b: jnp.sum(a * b, axis=(1, 2), keepdims=True)  # per image and channel
    apply = lambda x: hole * _laplacian(_laplacian(hole * x))
    x = hole * start
    r = -hole * _laplacian(_laplacian((1.0 - hole) * mu)) - apply(x)

    def step(_, carry):
        x, r, p, rr = carry
        ap = apply(p)
        # A converged (or empty) hole has p = 0: the guards keep the step at 0, not NaN.
        alpha = rr / jnp.maximum(dot(p, ap), 1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
        return x, r, r + rr_new / jnp.maximum(rr, 1e-30) * p, rr_new

    x = jax.lax.fori_loop(0, iterations, step, (x, r, r, dot(r, r)))[0]
    return jnp.where(hole > 0, x, mu)


def fill_holes_mixed(mu: jax.Array, mask: jax.Array) -> jax.Array:
    """μ with the masked pixels replaced by MIX_WEIGHT × harmonic + (1 − MIX_WEIGHT) × biharmonic
    fill (the biharmonic one started from the same harmonic fill). Known pixels are unchanged."""
    harmonic = fill_holes(mu, mask)
    biharmonic = _biharmonic_from(mu, mask, harmonic, BIFILL_ITERATIONS)
    return MIX_WEIGHT * harmonic + (1.0 - MIX_WEIGHT) * biharmonic


# The pre-fill of each filled condition (its extra channels; a zero residual network restores it).
PREFILLS = {
    "mu_mask_fill": fill_holes,
    "mu_mask_bifill": fill_holes_biharmonic,
    "mu_mask_mixfill": fill_holes_mixed,
}
CONDITIONS = ("mu", "mu_mask") + tuple(PREFILLS)
FILLED = tuple(PREFILLS)  # the conditions that carry a pre-fill


def condition(mu: jax.Array, mask: jax.Array | None, kind: str) -> jax.Array:
    """The network's condition for μ [B, H, W, C] and the mask [B, H, W, 1] (ignored for `mu`)."""
    check_condition(kind)
    if kind == "mu":
        return mu
    if mask is None:
        raise ValueError(f"condition={kind!r} needs the degradation mask")
    mask = jnp.asarray(mask, mu.dtype)
    parts = [mu, mask]
    if kind in PREFILLS:
        parts.append(PREFILLS[kind](mu, mask).astype(mu.dtype))
    return jnp.concatenate(parts, axis=-1)


def infer_mask(mu: np.ndarray, threshold: float = HOLE_THRESHOLD) -> np.ndarray:
    """Holes of a white-filled image in [-1, 1] ([..., H, W, C] → float32 [..., H, W, 1]). An exact
    fill (lossless file) gives exactly its pure-white pixels. A compressed one (JPEG): seeds are
    blobs (3×3 closing then opening) of pixels whose every channel is >= `threshold` ([0, 1]
    units), grown HOLE_GROW_STEPS pixels into pixels >= HOLE_GROW_LEVEL (the blurred rims), then
    closed. Real white content is taken for a hole too, which is why known masks are preferred."""
    from scipy import ndimage  # host-side morphology; the rest of this module is traced JAX

    unit = (np.asarray(mu, np.float32) + 1.0) / 2.0
    low = unit.min(axis=-1)  # a hole is white in every channel
    flat = low.reshape((-1,) + low.shape[-2:])
    out = np.empty(flat.shape, bool)
    box = np.ones((3, 3), bool)
    # Outside the image counts as "unknown" for both operations: a hole at the border stays whole.
    dilate = lambda m, **kw: ndimage.binary_dilation(m, box, border_value=0, **kw)
    erode = lambda m: ndimage.binary_erosion(m, box, border_value=1)
    for i, img in enumerate(flat):
        pure = img >= PURE_WHITE
        rim = dilate(pure) & ~pure
        exact = pure.any() and (not rim.any()
                                or np.mean(img[rim] >= HOLE_RIM_LEVEL) < LOSSLESS_RIM_SHARE)
        if exact:
            out[i] = pure  # an exact fill: known pixels stay known, however bright
            continue
        # Closing (fills JPEG pinholes), then opening (drops specks and thin bright lines).
        seed = dilate(erode(erode(dilate(img >= threshold))))
        grown = dilate(seed, iterations=HOLE_GROW_STEPS, mask=img >= HOLE_GROW_LEVEL)
        out[i] = erode(dilate(grown))
    return out.reshape(low.shape + (1,)).astype(np.float32)


def fill_residual(cond: jax.Array, kind: str) -> jax.Array | float:
    """The pre-fill's residual fill − μ (zero outside the holes) of a FILLED condition, else 0:
    what a residual-over-μ output is offset by (`sde.X0Rule.network`)."""
    check_condition(kind)
    if kind not in FILLED:
        return 0.0
    c = cond.shape[-1] // 2  # cond = [μ (c), mask (1), fill (c)]
    return cond[..., c + 1:] - cond[..., :c]
