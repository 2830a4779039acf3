"""The house rules of ARCHITECTURE.md, checked: layers, no import circles, one list per choice."""
from __future__ import annotations

import ast
import glob
import io
import os
import re
import tokenize

import pytest

from rdbm_jax import config as config_lib
from tests.helpers import REPO, config

PACKAGE = os.path.join(REPO, "rdbm_jax")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
    """{module name: file} of every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                out[_module_name(os.path.join(root, f))] = os.path.join(root, f)
    return out


MODULES = _modules()


def imports_of(module: str) -> set[str]:
    """Package modules that `module` imports anywhere in its file (function-local imports included).

    `from pkg import sub` counts the submodule only; `from pkg import name` counts pkg's __init__.
    """
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rdbm_jax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rdbm_jax"))
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_import_circle_anywhere_in_the_package():
    circles = sorted(m for m in MODULES
                     if m in _closure(m) and not MODULES[m].endswith("__init__.py"))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_the_import_graph_sees_local_imports():  # the checker itself: it must be able to fail
    assert "rdbm_jax.train" in GRAPH["rdbm_jax.main"]  # main imports the modes inside main()
    assert "rdbm_jax.program" in _closure("rdbm_jax.evaluate")
    assert "rdbm_jax.evaluation.scoring" in _closure("rdbm_jax.train")  # through validation


MODES = {"rdbm_jax.train", "rdbm_jax.evaluate", "rdbm_jax.sweep", "rdbm_jax.restore_files",
         "rdbm_jax.export", "rdbm_jax.api"}


@pytest.mark.parametrize(
    "module,forbidden",
    [
        # The math knows nothing of Flax, models, data or the loop.
        ("rdbm_jax.sde", {"rdbm_jax.models", "rdbm_jax.program", "rdbm_jax.train", "rdbm_jax.data"}
         ),
        ("rdbm_jax.schedules",
         {"rdbm_jax.models", "rdbm_jax.program", "rdbm_jax.train", "rdbm_jax.data"}),
        # Models know nothing of bridges; data knows nothing of models.
        ("rdbm_jax.models.unet",
         {"rdbm_jax.sde", "rdbm_jax.schedules", "rdbm_jax.conditioning", "rdbm_jax.data"}),
        ("rdbm_jax.data.pipeline",
         {"rdbm_jax.models", "rdbm_jax.sde", "rdbm_jax.program", "rdbm_jax.train"}),
        # What a config compiles never reaches into the loop or the modes, nor a checkpoint
        # (inference.py loads those).
        ("rdbm_jax.program", {
            "rdbm_jax.train", "rdbm_jax.evaluate", "rdbm_jax.sweep", "rdbm_jax.restore_files",
            "rdbm_jax.export", "rdbm_jax.api", "rdbm_jax.config", "rdbm_jax.inference",
            "rdbm_jax.checkpointing.checkpoints", "rdbm_jax.checkpointing.checkpoint_rotation"
        }),
        ("rdbm_jax.inference", MODES | {"rdbm_jax.config"}),
        # The evaluation layer serves the modes and never reaches one.
        ("rdbm_jax.evaluation.scoring",
         MODES | {"rdbm_jax.evaluation.reports", "rdbm_jax.evaluation.validation"}),
        ("rdbm_jax.evaluation.reports", MODES | {"rdbm_jax.evaluation.validation"}),
        ("rdbm_jax.evaluation.validation", MODES),
        # Training, sweep and the other modes never import a mode (they share the evaluation layer).
        ("rdbm_jax.train", MODES - {"rdbm_jax.train"}),
        ("rdbm_jax.evaluate", {"rdbm_jax.train"}),
        ("rdbm_jax.sweep", MODES - {"rdbm_jax.sweep"}),
        ("rdbm_jax.restore_files", {"rdbm_jax.train"}),
        ("rdbm_jax.export", {"rdbm_jax.train"}),
        ("rdbm_jax.api", {"rdbm_jax.train"}),
        # The runtime weight loader is apart from the torch converter.
        ("rdbm_jax.evaluation.perceptual.lpips", {"rdbm_jax.evaluation.perceptual.convert"}),
        ("rdbm_jax.evaluation.perceptual.inception", {"rdbm_jax.evaluation.perceptual.convert"}),
    ])
def test_layers(module, forbidden):
    reached = _closure(module) | {module}
    assert not reached & forbidden, f"{module} reaches {sorted(reached & forbidden)}"


_MODE_PREFIXES = ("rdbm_jax.train", "rdbm_jax.evaluate", "rdbm_jax.sweep", "rdbm_jax.restore_files",
                  "rdbm_jax.export", "rdbm_jax.api", "rdbm_jax.app", "rdbm_jax.app_handlers",
                  "rdbm_jax.main")
# ARCHITECTURE.md's layers as path prefixes: nothing under a key reaches anything under its values.
PREFIX_RULES = {
    "rdbm_jax.runtime": ("rdbm_jax.sde", "rdbm_jax.schedules", "rdbm_jax.models",
                         "rdbm_jax.evaluation", "rdbm_jax.checkpointing", "rdbm_jax.program",
                         "rdbm_jax.inference", "rdbm_jax.sampler") + _MODE_PREFIXES,
    "rdbm_jax.sde": ("rdbm_jax.models", "rdbm_jax.data", "rdbm_jax.evaluation",
                     "rdbm_jax.checkpointing", "rdbm_jax.runtime", "rdbm_jax.program",
                     "rdbm_jax.inference") + _MODE_PREFIXES,
    "rdbm_jax.models": ("rdbm_jax.sde", "rdbm_jax.schedules", "rdbm_jax.conditioning",
                        "rdbm_jax.data", "rdbm_jax.evaluation", "rdbm_jax.checkpointing")
                       + _MODE_PREFIXES,
    "rdbm_jax.data": ("rdbm_jax.models", "rdbm_jax.sde", "rdbm_jax.program", "rdbm_jax.inference",
                      "rdbm_jax.evaluation", "rdbm_jax.checkpointing") + _MODE_PREFIXES,
    "rdbm_jax.checkpointing": ("rdbm_jax.evaluation", "rdbm_jax.program", "rdbm_jax.inference")
                              + _MODE_PREFIXES,
    "rdbm_jax.evaluation": _MODE_PREFIXES,
}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("prefix", sorted(PREFIX_RULES))
def test_layers_by_path_prefix(prefix):
    members = [m for m in MODULES if _under(m, prefix)]
    assert members, f"no module under {prefix}"  # the rule must be about something
    for module in members:
        bad = sorted(d for d in _closure(module) for f in PREFIX_RULES[prefix] if _under(d, f))
        assert not bad, f"{module} reaches {bad}"


def test_the_prefix_rule_can_fail():
    assert _under("rdbm_jax.evaluation.perceptual.fid", "rdbm_jax.evaluation")
    assert not _under("rdbm_jax.train_state", "rdbm_jax.train")
    assert any(_under(d, "rdbm_jax.evaluation") for d in _closure("rdbm_jax.train"))


def test_math_imports_no_flax():
    math = [m for m in MODULES if m == "rdbm_jax.schedules" or m.startswith("rdbm_jax.sde")]
    assert "rdbm_jax.sde.parameterizations" in math  # the checker sees the sde subpackage
    for module in math:
        text = open(MODULES[module], encoding="utf-8").read()
        assert not re.search(r"^\s*(import|from) flax", text, re.M), module


def test_only_the_loop_inference_and_api_open_checkpoints():
    users = {m for m, deps in GRAPH.items() if "rdbm_jax.checkpointing.checkpoints" in deps}
    # checkpoint_rotation: the checkpoint layer's own reader of a rotating workdir
    assert users == {"rdbm_jax.train", "rdbm_jax.inference", "rdbm_jax.api",
                     "rdbm_jax.checkpointing.checkpoint_rotation"}
    workaround_users = {m for m, deps in GRAPH.items()
                        if "rdbm_jax.checkpointing.orbax_workarounds" in deps}
    assert workaround_users == {"rdbm_jax.checkpointing.checkpoints"}


def test_main_only_dispatches():
    assert GRAPH["rdbm_jax.main"] <= {
        "rdbm_jax.cli_help", "rdbm_jax.runtime.distributed", "rdbm_jax.errors", "rdbm_jax.train",
        "rdbm_jax.evaluate", "rdbm_jax.restore_files", "rdbm_jax.sweep", "rdbm_jax.export",
        "rdbm_jax.app"
    }


def test_the_page_restores_through_the_api_only_and_only_main_serves_it():
    """--mode=app has one restore path (the API, the baselines): no other mode under it."""
    for module in ("rdbm_jax.app", "rdbm_jax.app_handlers"):
        reached = _closure(module) & (MODES - {"rdbm_jax.api"})
        assert not reached, f"{module} reaches {sorted(reached)}"
    assert "rdbm_jax.api" in GRAPH["rdbm_jax.app_handlers"]
    users = {m for m, deps in GRAPH.items() if deps & {"rdbm_jax.app", "rdbm_jax.app_handlers"}}
    assert users == {"rdbm_jax.main", "rdbm_jax.app"}, users


def _source_files() -> dict[str, str]:
    """{dotted name: file} of every Python file held to the style rules: the package, configs/,
    benchmarks/, experiments/ and tests/ (not their results/: recorded output)."""
    out = dict(MODULES)
    for folder in ("configs", "benchmarks", "experiments", "tests"):
        for root, dirs, files in os.walk(os.path.join(REPO, folder)):
            dirs[:] = [d for d in dirs if d not in ("results", "__pycache__")]
            for f in files:
                if f.endswith(".py"):
                    out[_module_name(os.path.join(root, f))] = os.path.join(root, f)
    return out


SOURCE_FILES = _source_files()


def long_lines(path: str, limit: int = 100) -> list[int]:
    """Numbers of the lines of `path` longer than `limit` columns."""
    with open(path, encoding="utf-8") as f:
        return [n for n, line in enumerate(f, 1) if len(line.rstrip("\n")) > limit]


def packed_statements(source: str) -> list[int]:
    """Lines holding two statements: `a; b`, or a block's body on its header line (`if x: y`)."""
    lines = [t.start[0] for t in tokenize.generate_tokens(io.StringIO(source).readline)
             if t.type == tokenize.OP and t.string == ";"]
    blocks = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.FunctionDef, ast.ClassDef)
    lines += [n.lineno for n in ast.walk(ast.parse(source))
              if isinstance(n, blocks) and n.body[0].lineno == n.lineno]
    return sorted(lines)


def test_the_style_checkers_can_fail():
    assert packed_statements("a = 1; b = 2\nif a: b = 3\nif a:\n    b = 4\n") == [1, 2]
    assert packed_statements("s = 'a; b'  # c; d\n") == []


def test_source_files_reach_beyond_the_package():
    assert {"configs.demo", "benchmarks.run_all", "experiments.ablation",
            "tests.test_architecture"} <= set(SOURCE_FILES)
    assert not any(".results." in name for name in SOURCE_FILES)


def test_benchmarks_measure_and_experiments_experiment():
    """benchmarks/ holds no experiment (the ablation and the NFE toy live in experiments/), no
    results folder keeps a script, and no benchmark builds a Sampler by hand
    (`program.build_sampler` does)."""
    names = set(os.listdir(os.path.join(REPO, "benchmarks")))
    assert not {"ablation.py", "exact_nfe.py"} & names
    assert {"ablation.py", "exact_nfe.py"} <= set(os.listdir(os.path.join(REPO, "experiments")))
    for folder in ("benchmarks", "experiments"):
        for root, _, files in os.walk(os.path.join(REPO, folder, "results")):
            assert not [f for f in files if f.endswith(".py")], root
    for name, path in SOURCE_FILES.items():
        if name.startswith(("benchmarks.", "experiments.")):
            assert "Sampler(" not in open(path, encoding="utf-8").read(), name


def test_lines_within_100_columns():
    long = {m: n for m, p in SOURCE_FILES.items() if (n := long_lines(p))}
    assert not long, f"lines over 100 columns: {long}"


def test_one_statement_a_line():
    packed = {m: n for m, p in SOURCE_FILES.items()
              if (n := packed_statements(open(p, encoding="utf-8").read()))}
    assert not packed, f"two statements on one line: {packed}"


def test_no_module_over_400_lines():
    """The package, configs/, benchmarks/ and experiments/ (tests/ may hold longer files)."""
    long = {
        m: n
        for m, p in SOURCE_FILES.items()
        if not m.startswith("tests.") and (n := sum(1 for _ in open(p, encoding="utf-8"))) > 400
    }
    assert not long, long


# ---------------------------------------------------------------------------------------- choices
def test_choices_are_the_owning_modules_lists():
    from rdbm_jax.evaluation import metrics
    from rdbm_jax import models, program, schedules, sde, train_state
    from rdbm_jax.runtime import writers
    from rdbm_jax.data import spec

    c = config_lib.CHOICES
    assert c["model.size"] == tuple(models.SIZES) and c["bridge.preset"] == schedules.PRESETS
    assert c["bridge.parameterization"] is sde.PARAMETERIZATIONS and c[
        "train.loss"] is program.LOSSES
    assert c["optim.optimizer"] is train_state.OPTIMIZERS and c[
        "train.tensorboard"] is writers.WRITERS
    assert c["data.flip"] is spec.FLIPS and c["eval.color"] is metrics.COLORS
    assert c["train.t_sampling"] is program.T_SAMPLINGS


def _default_py_comments() -> dict[str, str]:
    """{"section.key": its end-of-line comment (continued on the next comment-only lines)} of
    default.py."""
    lines = open(os.path.join(REPO, "configs", "default.py"), encoding="utf-8").read().splitlines()
    out, section, last = {}, "", None
    for line in lines:
        m = re.match(r"\s*c\.(\w+) = ml_collections\.ConfigDict", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"\s*(\w+)=.*?#(.*)$", line)
        if m and section:
            last = f"{section}.{m.group(1)}"
            out[last] = m.group(2)
        elif last and re.match(r"\s*#", line):
            out[last] += " " + line.strip()[1:]
        else:
            last = None
    return out


def listed_choices(comment: str) -> list[str]:
    """The values of an "a | b | c" list in a comment (parenthesised remarks dropped)."""
    text = re.sub(r"\([^)]*\)", "", comment)
    m = re.search(r"([\w\"'.-]+)((?:\s*\|\s*[\w\"'.-]+)+)", text)
    if not m:
        return []
    return [t.strip().strip("\"'") for t in [m.group(1)] + m.group(2).split("|")[1:]]


def test_listed_choices_parser():
    assert listed_choices(" mu (paper) | mu_mask | mu_mask_fill: also ...") == [
        "mu", "mu_mask", "mu_mask_fill"
    ]
    assert listed_choices(" compute dtype: float32 | bfloat16") == ["float32", "bfloat16"]
    assert listed_choices(" no list here") == []


def test_default_py_comments_list_exactly_the_choices():
    comments = _default_py_comments()
    for key, allowed in config_lib.CHOICES.items():
        assert key in comments, f"configs/default.py: {key} has no comment listing its choices"
        listed = listed_choices(comments[key])
        named = [v for v in allowed if v]  # "" (a preset's default) is described in words
        assert sorted(listed) == sorted(
            named), f"configs/default.py comment of {key}: {listed} vs {named}"


def _config_files() -> list[str]:
    folder = os.path.join(REPO, "configs")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))


def _docs() -> list[str]:
    pages = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
    assert pages, "docs/*.md not found"
    return _config_files() + [os.path.join(REPO, f) for f in ("README.md", "ARCHITECTURE.md")] + [
        os.path.join(REPO, "benchmarks", "RESULTS.md")] + pages + list(MODULES.values())


def test_every_choice_value_written_in_configs_and_docs_exists():
    bad = []
    for path in _docs():
        text = open(path, encoding="utf-8").read()
        # `--config.key=value` (docs, command lines) and `c.key = "value"` (config files)
        for key, value in re.findall(r"--config\.([\w.]+)=([\w\"'.-]*)", text) + \
                re.findall(r"\bc\.([\w.]+)\s*=\s*(\"[^\"]*\"|'[^']*')", text):
            value = value.strip("\"'").rstrip(".")
            if key in config_lib.CHOICES and value not in config_lib.CHOICES[key]:
                bad.append(f"{os.path.relpath(path, REPO)}: {key}={value!r}")
    assert not bad, bad


def test_every_config_file_validates():
    from rdbm_jax import config_files

    for path in _config_files():
        if os.path.basename(path) == "common.py":  # helpers, not a config
            continue
        config_lib.validate(config_files.load(path))


def test_public_names_are_defined_where_they_are_exported():
    """sde.__all__ is the bridge math of the sde package itself: no re-exported schedule names."""
    from rdbm_jax import sde

    for name in sde.__all__:
        value = getattr(sde, name)
        home = getattr(value, "__module__", "rdbm_jax.sde")  # tuples have no __module__
        assert home.startswith("rdbm_jax.sde"), f"sde.__all__ re-exports {name} from {home}"
    assert not {"make_schedule", "Schedule", "PRESETS", "timestep_pairs"} & set(sde.__all__)


# ----------------------------------------------------------- ARCHITECTURE.md's claims, checked
def _architecture_md() -> str:
    return open(os.path.join(REPO, "ARCHITECTURE.md"), encoding="utf-8").read()


def _functions_with(module: str, wanted) -> set[tuple[str, str, str]]:
    """(module without "rdbm_jax.", qualified function, detail) for every node `wanted(node)` names
    (it returns the detail or None) inside a function of `module`."""
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
    short = module[len("rdbm_jax."):]
    found = set()

    def visit(node: ast.AST, scope: list[str], in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                is_function = not isinstance(child, ast.ClassDef)
                visit(child, scope + [child.name], in_function or is_function)
                continue
            detail = wanted(child) if in_function else None
            for d in ([detail] if isinstance(detail, str) else detail or []):
                found.add((short, ".".join(scope), d))
            visit(child, scope, in_function)

    visit(tree, [], False)
    return found


def _local_import(node: ast.AST):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return node.module
    return None


def _uint8_cast(node: ast.AST):
    """"uint8" for `x.astype(np.uint8)` / `x.astype(jnp.uint8)` / `x.astype("uint8")`."""
    is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    if is_call and node.func.attr == "astype":
        arg = node.args[0] if node.args else None
        if (isinstance(arg, ast.Attribute) and arg.attr == "uint8") or \
                (isinstance(arg, ast.Constant) and arg.value == "uint8"):
            return "uint8"
    return None


def test_function_local_imports_are_exactly_the_documented_ones():
    table = re.findall(r"^\| `([\w.]+)` `([\w.]+)` \| ([^|]+) \|", _architecture_md(), re.M)
    assert len(table) > 10  # the parser read the table
    documented = {(m, f, imp) for m, f, imports in table
                  for imp in re.findall(r"`([\w.]+)`", imports)}
    in_code = set().union(*(_functions_with(m, _local_import) for m in MODULES
                            if not MODULES[m].endswith("__init__.py")))
    assert in_code - documented == set(), "function-local imports missing from ARCHITECTURE.md"
    assert documented - in_code == set(), "ARCHITECTURE.md lists local imports the code lacks"


def test_uint8_conversions_are_exactly_the_documented_ones():
    text = _architecture_md()
    bullet = text[text.index("**uint8 conversions**"):].split("\n- ")[0]
    documented = set(re.findall(r"`([\w.]+\.[\w.]+)` \(|`([\w.]+\.[\w.]+)`, which", bullet))
    documented = {a or b for a, b in documented}
    in_code = {f"{m}.{f}" for mod in MODULES for m, f, _ in _functions_with(mod, _uint8_cast)}
    assert len(documented) >= 3 and documented == in_code, (documented, in_code)


def test_argument_rules_of_the_math_api_are_in_its_docstrings():
    """help(sde.sample) / help(sde.reverse_step) state the rules their ValueErrors enforce."""
    from rdbm_jax import sde

    rules = {sde.sample: ("num_steps: the NFE", "rng: a PRNG key", "eta: in [0, 1]",
                          "parameterization: one of PARAMETERIZATIONS", "pi: a mode of PI_MODES"),
             sde.reverse_step: ("eta: in [0, 1]", "noise: z", "pi: a mode of PI_MODES")}
    for fn, phrases in rules.items():
        missing = [p for p in phrases if p not in fn.__doc__]
        assert not missing, f"sde.{fn.__name__}'s docstring lacks {missing}"
