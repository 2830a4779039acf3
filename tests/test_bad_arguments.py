"""Bad arguments and damaged descriptions, each one line naming what is wrong: the API's arguments,
restorer.json, a crafted checkpoint config (API and command line alike)."""
import json
import os

import numpy as np
import pytest

import rdbm_jax
from rdbm_jax import export_loader
from rdbm_jax.errors import ConfigError
from rdbm_jax.restore_files import run_restore_files
from tests.helpers import config


@pytest.fixture(scope="module")
def model(trained_run):
    return rdbm_jax.load(trained_run)


IMG = np.zeros((16, 16, 3), np.uint8)


@pytest.mark.parametrize("call, match", [
    # was: zip() argument 2 is shorter than argument 1
    (lambda m: m.restore([IMG, IMG], mask=[np.zeros((16, 16))]), r"^mask: got 1 masks for 2 "),
    (lambda m: m.restore([IMG, IMG], mask=np.zeros((16, 16))), r"^mask: got a ndarray for a list"),
    # was: operands could not be broadcast together
    (lambda m: m.restore(np.stack([IMG] * 2), mask=np.zeros((3, 16, 16))),
     r"^mask: shape \(3, 16, 16\) does not fit the images' \(2, 16, 16\)"),
    # was: need at least one array to concatenate
    (lambda m: m.restore(np.zeros((0, 16, 16, 3), np.uint8)), r"^images: an empty batch"),
    # was: OverflowError: Python int too large to convert to C long
    (lambda m: m.restore(IMG, seed=2**64), r"^seed: got 18446744073709551616; expected an integer "
                                          r"in \[-9223372036854775808, "),
    (lambda m: m.restore(IMG, num_steps=float("inf")), r"^num_steps: got inf; expected an integer"),
    (lambda m: m.restore(IMG, num_steps="ten"), r"^num_steps: got 'ten'; expected an integer"),
    (lambda m: m.restore(IMG, eta=float("nan")), r"^eta: got nan; expected a finite number"),
    (lambda m: m.restore(IMG, batch_size=0), r"^batch_size: got 0; expected an integer >= 1"),
    (lambda m: m.restore(IMG, seed=1.5), r"^seed: got 1.5; expected an integer"),
])
def test_api_argument_errors_name_the_argument(model, call, match):
    with pytest.raises(ValueError, match=match) as err:
        call(model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, match", [
    ("{not json", r"restorer.json: not valid JSON \("),
    ("[1, 2]", r"restorer.json: holds a JSON list, not the object --mode=export writes"),
])
def test_restorer_json_that_is_not_an_object_is_named(tmp_path, text, match):
    (tmp_path / "restorer.jax").write_bytes(b"not read")
    (tmp_path / "restorer.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        export_loader.load(str(tmp_path / "restorer.jax"))


def _saved_config_file(workdir: str) -> str:
    """The JSON file holding checkpoint 2's saved config."""
    folder = os.path.join(workdir, "checkpoints", "2", "config")
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    doc = json.load(f)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(doc, dict) and "model" in doc:
                return os.path.join(root, name)
    raise AssertionError(f"no saved config under {folder}")


def _craft(workdir: str, section: str, key: str, value) -> None:
    path = _saved_config_file(workdir)
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    doc[section][key] = value
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


@pytest.mark.parametrize("section, key, value, match", [
    ("model", "size", 5, r"model.size=5 is not one of"),  # was: KeyError: 5
    ("bridge", "num_timesteps", "100",  # was: TypeError: '>' not supported between 'str' and 'int'
     r"bridge.num_timesteps='100' must be >= 2"),
])
def test_crafted_checkpoint_config_is_one_line_in_the_api_and_the_cli(trained_workdir, tmp_path,
                                                                      section, key, value, match):
    _craft(trained_workdir, section, key, value)
    where = os.path.join(trained_workdir, "checkpoints", "2", "config")
    with pytest.raises(ConfigError, match=rf"^checkpoint config {where}: {match}") as err:
        rdbm_jax.load(trained_workdir)
    assert "\n" not in str(err.value)
    # the command line: the same line, and no `set --config.model.size=5` hint (not an override
    # that could work)
    (tmp_path / "in").mkdir()
    from PIL import Image
    Image.fromarray(IMG).save(tmp_path / "in" / "a.png")
    cfg = config(**{"sample.input_dir": str(tmp_path / "in"),
                    "sample.output_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match=rf"^checkpoint config {where}: {match}") as err:
        run_restore_files(cfg, trained_workdir)
    assert "set --config" not in str(err.value)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
