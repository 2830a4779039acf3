"""setup.py bounds the fast-moving libraries from above, and the installed (tested) versions fit."""
from __future__ import annotations

import ast
import importlib.metadata
import os

import pytest
from packaging.requirements import Requirement

from tests.helpers import REPO

FAST_MOVING = ("orbax-checkpoint", "grain", "jax", "flax", "optax")


def _install_requires() -> dict[str, Requirement]:
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    call = next(n for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    (listed,) = [k.value for k in call.keywords if k.arg == "install_requires"]
    reqs = [Requirement(ast.literal_eval(element)) for element in listed.elts]
    return {r.name.lower(): r for r in reqs}


def test_fast_moving_dependencies_have_upper_bounds():
    reqs = _install_requires()
    unbounded = [n for n in FAST_MOVING
                 if not any(s.operator in ("<", "<=") for s in reqs[n].specifier)]
    assert not unbounded, f"setup.py: no tested upper bound for {unbounded}"


@pytest.mark.parametrize("name", FAST_MOVING)
def test_installed_version_is_within_the_bounds(name):
    requirement = _install_requires()[name]
    version = importlib.metadata.version(name)
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{name} {version} is outside setup.py's {requirement}: test it, then move the bound")
