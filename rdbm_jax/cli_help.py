"""What `python -m rdbm_jax.main --help` prints, and `--mode=print_config`'s resolved config."""
from __future__ import annotations

import ast
import os
import textwrap

import ml_collections

from rdbm_jax import config as config_lib, models
from rdbm_jax.config_files import sibling

# --mode → what it does (main.MODES lists the modes; a test checks both name the same ones).
MODE_HELP = {
    "train": "train, resuming from the newest checkpoint in --workdir (metrics.jsonl, samples/, "
             "curves.png, tensorboard/, checkpoints/)",
    "eval": "score the newest checkpoint on every test set beside the classical baseline and the "
            "input: <workdir>/eval/",
    "sample": "restore every image under sample.input_dir into sample.output_dir",
    "sweep": "one checkpoint across sweep.nfe x sweep.eta: <workdir>/sweep/",
    "export": "the whole restorer as a jax.export artifact: <workdir>/export/",
    "app": "a local web page to try the run: upload a photo, paint the holes, restore it beside "
           "the classical baseline, download (app.host, app.port; needs pip install -e "
           "\".[app]\")",
    "print_config": "print the resolved config (file, variant and overrides), validated, and exit: "
                    "runs nothing, needs no --workdir",
}
EXAMPLES = (
    "python -m rdbm_jax.main --config=configs/demo.py --workdir=/tmp/rdbm_demo",
    "python -m rdbm_jax.main --config=configs/demo.py --workdir=/tmp/rdbm_demo --mode=eval",
    "python -m rdbm_jax.main --config=configs/inpaint.py:S --mode=print_config "
    "--config.data.root=/data/celeba",
    "python -m rdbm_jax.main --config=configs/demo.py:tiny --workdir=/tmp/smoke "
    "--config.train.num_steps=4",
)


def configs_folder() -> str:
    """configs/ of the current folder when there is one (a clone's root), else the one beside the
    package."""
    here = os.path.join(os.getcwd(), "configs")
    if os.path.isfile(os.path.join(here, "default.py")):
        return here
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def describe_config(path: str) -> tuple[str, str] | None:
    """(first docstring line, variants) of a config file, read without running it; None for a file
    that defines no get_config (a helper module such as configs/common.py)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    if not any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body):
        return None
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    return (doc[0] if doc else ""), _variants(tree)


def _variants(tree: ast.Module) -> str:
    """The `:ARG` values a config's `common.variant(arg, default_size=…, options=…)` call
    accepts."""
    for node in ast.walk(tree):
        name = getattr(node, "func", None)
        called = getattr(name, "attr", getattr(name, "id", ""))
        if isinstance(node, ast.Call) and called == "variant":
            kw = {k.arg: k.value for k in node.keywords}
            default = ast.literal_eval(kw["default_size"]) if "default_size" in kw else None
            options = list(ast.literal_eval(kw["options"])) if "options" in kw else []
            return (f":{'|'.join(models.SIZES)} model size (default {default}); :tiny a "
                    "seconds-long smoke test" + (f"; :{'|'.join(options)}" if options else "")
                    + " (several joined with commas)")
    return "none (the base of the others)"


def text(modes: tuple[str, ...]) -> str:
    """The whole --help text."""
    folder = configs_folder()
    lines = ["usage: python -m rdbm_jax.main --config=configs/<file>.py[:VARIANT] --workdir=DIR "
             "[--mode=MODE] [--config.<section>.<key>=VALUE ...]", "",
             "Restore images with a Residual Diffusion Bridge Model (JAX/Flax): train, evaluate, "
             "restore folders, sweep the sampler, export.", "", "modes (--mode, default train):"]
    lines += [_item(m, MODE_HELP[m], 15) for m in modes]
    lines += ["", f"config files ({folder}):"]
    for name in sorted(os.listdir(folder)):
        found = describe_config(os.path.join(folder, name)) if name.endswith(".py") else None
        if found:
            lines += [_item(name, found[0], 20), _item("", "variants " + found[1], 20)]
    default = sibling(os.path.join(folder, "default.py")).get_config()
    sections = ", ".join(k for k, v in default.items() if isinstance(v, ml_collections.ConfigDict))
    lines += ["", f"config keys: every key of configs/default.py, in sections {sections}; override "
              "one with --config.<section>.<key>=VALUE (unknown keys and wrong types are refused).",
              "See the resolved config without running anything: --mode=print_config.", "",
              "examples:"] + [f"  {e}" for e in EXAMPLES]
    lines += ["", "multi-process: --coordinator=host:port --num_processes=N --process_id=i (or "
              "RDBM_COORDINATOR, RDBM_NUM_PROCESSES, RDBM_PROCESS_ID, SLURM's variables).",
              "exit codes: 0 done; 1 the run failed (one 'error:' line); 2 the command line or the "
              "config is unusable (nothing was run).", "More: README.md."]
    return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="  ") if len(line) > WIDTH
                     and not line.startswith(" ") else line for line in lines) + "\n"


WIDTH = 100  # columns of the help text


def _item(name: str, what: str, indent: int) -> str:
    """`  name   what…` with `what` wrapped under itself."""
    return textwrap.fill(what, WIDTH, initial_indent=f"  {name:<{indent - 2}} ",
                         subsequent_indent=" " * (indent + 1))


def resolved_config(cfg: ml_collections.ConfigDict) -> str:
    """The validated config as `--mode=print_config` prints it (YAML-like, every key)."""
    config_lib.validate(cfg)
    return str(cfg)
