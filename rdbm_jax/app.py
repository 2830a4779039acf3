"""`--mode=app`: a local web page (Gradio, the optional `[app]` extra) to try a trained run:
upload a photo, paint the holes, restore, see RDBM beside the classical baseline, download.

Only the page lives here; what it does is `app_handlers` (tested without a browser).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from typing import Any

import ml_collections
import numpy as np

from rdbm_jax import api, app_handlers as handlers, config as config_lib
from rdbm_jax.data import image_io
from rdbm_jax.errors import ConfigError, RDBMError

EXTRA = 'pip install -e ".[app]"'
OUTPUT_HEIGHT = 320  # CSS pixels of each result image
# Results fill their box (a small photo scaled up, its pixels kept sharp, to compare them).
CSS = ("#input img, #baseline img, #rdbm img {width: 100%; height: 100%; object-fit: contain; "
       "image-rendering: pixelated}")
BRUSH_COLOR = "#ff00ff"  # magenta: seen on most photos; any painted pixel is a hole, whatever color


def brush_radius(height: int, width: int) -> int:
    """The brush's starting radius in photo pixels: 1/40 of the short side, at least 3 (Gradio's
    "auto" covers a fifth of a small photo); the brush tool's slider changes it."""
    return max(3, round(min(height, width) / 40))


def build_page(page: handlers.PageModel, out_dir: str) -> Any:
    """The Gradio Blocks of the page (queued: one restore at a time)."""
    # No network at run time: Gradio's usage statistics off before it is imported.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr  # the optional [app] extra, checked by `serve` before this runs

    cfg = page.model.config

    def on_upload(path: str | None) -> tuple[Any, ...]:
        # The upload box is emptied each time (the photo lives on in the editor), for the next.
        if not path:
            return None, None, None, ""
        try:
            photo = handlers.decode_upload(path)
        except Exception as e:  # noqa: BLE001 — every failure is one line on the page
            return _failed(gr, e, None, None, None)
        h, w = photo.shape[:2]
        hint = "paint over what should go, then" if page.brush else "now"
        value = {"background": photo, "layers": [], "composite": None}
        editor_update = gr.ImageEditor(value=value, brush=_brush(gr, brush_radius(h, w))) \
            if page.brush else value
        return None, photo, editor_update, (
            f"loaded {image_io.shown(os.path.basename(path))} ({w}x{h}): {hint} press Restore")

    def on_restore(photo: np.ndarray | None, editor: dict | None, nfe: float,
                   eta: float) -> tuple[Any, ...]:
        try:
            if photo is None:
                raise ValueError("no photo yet: upload one first")
            painted = handlers.painted_mask(editor, photo.shape[:2]) if page.brush else None
            r = page.restore(photo, painted, int(nfe), float(eta))
            result = handlers.write_png(r.restored, out_dir, "rdbm_restored.png")
            mask = None if r.holes is None else handlers.write_png(r.holes, out_dir,
                                                                   "rdbm_mask.png")
        except Exception as e:  # noqa: BLE001 — every failure is one line on the page
            return _failed(gr, e, None, None, None, None, None)
        return r.degraded, r.baseline, r.restored, result, mask, r.status

    with gr.Blocks(title="RDBM: restore a photo", analytics_enabled=False) as demo:
        gr.Markdown(f"### RDBM restore: {_describe(page)}")
        photo = gr.State(None)
        with gr.Row():
            upload = gr.File(label="Photo (PNG, JPEG, WebP)", type="filepath",
                             file_types=list(handlers.UPLOAD_TYPES), elem_id="upload", scale=1)
            brush = _brush(gr, 3) if page.brush else False
            editor = gr.ImageEditor(
                label="Paint the holes (brush size: the brush tool's slider)" if page.brush
                else "Photo", type="numpy", image_mode="RGBA", sources=(), transforms=(),
                brush=brush, layers=False, format="png", elem_id="editor", scale=3)
        with gr.Row():
            nfe = gr.Slider(1, cfg.bridge.num_timesteps, value=cfg.sample.num_steps, step=1,
                            label="NFE (sampling steps)", elem_id="nfe")
            stochastic = config_lib.stochastic_steps_allowed(cfg)
            eta = gr.Slider(0.0, 1.0, value=cfg.sample.eta, step=0.05, interactive=stochastic,
                            label="η (0: deterministic; 1: posterior sampling)" if stochastic
                            else "η: 0 only (this model fuses x̂0 by x_t; see docs/sampling.md)",
                            elem_id="eta")
            button = gr.Button("Restore", variant="primary", elem_id="restore")
        status = gr.Textbox(label="Status", interactive=False, max_lines=1, elem_id="status")
        with gr.Row():
            shown = [gr.Image(label=label, type="numpy", format="png", interactive=False,
                              height=OUTPUT_HEIGHT, elem_id=elem) for label, elem in (
                ("Input", "input"), (f"Baseline: {page.baseline_name}", "baseline"),
                ("RDBM", "rdbm"))]
        with gr.Row():
            result = gr.File(label="RDBM's result (PNG)", elem_id="result")
            mask = gr.File(label="The holes (PNG, white = hole: a sample.mask_dir mask)",
                           elem_id="mask", visible=page.brush)
        upload.upload(on_upload, [upload], [upload, photo, editor, status])
        button.click(on_restore, [photo, editor, nfe, eta], shown + [result, mask, status],
                     concurrency_limit=1)
    return demo.queue(default_concurrency_limit=1)


def _brush(gr: Any, radius: int) -> Any:
    """The hole brush: one fixed color (any painted pixel is a hole), `radius` photo pixels."""
    return gr.Brush(default_size=radius, colors=[BRUSH_COLOR], color_mode="fixed")


def _failed(gr: Any, e: BaseException, *cleared: Any) -> tuple[Any, ...]:
    """The page's answer to a failure: the outputs `cleared`, a warning toast and the status line
    "error: …" (one line), so the page stays usable."""
    message = handlers.error_line(e)
    gr.Warning(message)
    return (*cleared, f"error: {message}")


def _describe(page: handlers.PageModel) -> str:
    """One line naming the served run."""
    c = page.model.config
    return (f"step {page.model.step}, size {c.model.size}, trained on "
            f"{', '.join(page.degradations)}, condition {c.model.condition}")


def serve(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """`--mode=app`: load the run in `workdir` once and serve the page at app.host:app.port until
    interrupted."""
    config_lib.validate(cfg)
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError(f"--mode=app needs Gradio, an optional extra: {EXTRA}")
    image_io.set_max_pixels(cfg.data.max_image_pixels)
    step = None if cfg.app.step < 0 else cfg.app.step
    try:
        model = api.load(workdir, step, use_ema=cfg.sample.use_ema)
    except RDBMError:
        raise
    except ValueError as e:  # the API names its argument step=; the command line's key is app.step
        raise ConfigError(f"app.{e}" if str(e).startswith("step=") else str(e)) from None
    page = handlers.PageModel(model)
    host, port = cfg.app.host, cfg.app.port
    with tempfile.TemporaryDirectory(prefix="rdbm_app_") as out_dir:
        demo = build_page(page, out_dir)
        try:
            demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                        share=False, inbrowser=False, ssr_mode=False, allowed_paths=[out_dir],
                        css=CSS)
        except OSError as e:  # the port is taken, or the address is not this machine's
            raise ConfigError(f"app.host={host!r} app.port={port}: cannot serve there "
                              f"({' '.join(str(e).split())})") from None
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        sys.stdout.write(f"rdbm_jax app: {workdir} (step {page.model.step}) at {url} "
                         "(Ctrl+C stops it)\n")
        sys.stdout.flush()
        try:
            demo.block_thread()
        finally:
            demo.close()
