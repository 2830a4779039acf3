"""Bad arguments, files and damaged descriptions, each one line naming what is wrong: the API's
arguments (floats out of [0, 1], NaN, step=), restorer.json, a crafted or wrong-shaped checkpoint
config (API and command line alike), a file name holding a newline (quoted)."""
import json
import os
import shutil

import numpy as np
import pytest

import rdbm_jax
from rdbm_jax import api, export_loader, program
from rdbm_jax.checkpointing import checkpoints
from rdbm_jax.errors import ConfigError, DataError
from rdbm_jax.restore_files import run_restore_files
from tests.helpers import config, sample_config, write_png


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


# --- names with a newline are quoted --------------------------------------------------------------

def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path, trained_workdir):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png")
    (src / "bad\nname.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        run_restore_files(sample_config(src, out), trained_workdir)
    assert "\n" not in str(err.value) and repr(str(src / "bad\nname.png")) in str(err.value)


# --- a checkpoint config of the wrong shape -------------------------------------------------------

@pytest.mark.parametrize("content", ["[1, 2]", '{"model": 3, "bridge": {}, "sample": {}}'])
def test_a_checkpoint_config_of_the_wrong_shape_is_one_line_naming_it(tmp_path, trained_workdir,
                                                                       content):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    directory, step = checkpoints.resolve(workdir)
    with open(os.path.join(directory, str(step), "config", "metadata"), "w") as f:
        f.write(content)
    where = os.path.join(directory, str(step), "config")
    with pytest.raises(ConfigError, match=rf"checkpoint config {where} is not a saved run config"):
        api.load(workdir)
    write_png(tmp_path / "in" / "a.png")
    with pytest.raises(ConfigError, match=rf"checkpoint config {where} is not a saved run config"):
        run_restore_files(sample_config(tmp_path / "in", tmp_path / "out"), workdir)


# --- restore() refuses floats out of [0, 1] and non-finite values ---------------------------------

@pytest.mark.parametrize("values, message", [
    (np.full((16, 16, 3), 200.0, np.float32),
     r"span \[200, 200\].*\[0, 1\].*divide 0–255 floats by 255"),
    (np.full((16, 16, 3), -0.5, np.float32), r"span \[-0.5, -0.5\].*must lie in \[0, 1\]"),
    (np.where(np.eye(16)[..., None] > 0, np.nan, 0.5).repeat(3, -1).astype(np.float32),
     r"NaN or infinite"),
])
def test_restore_refuses_floats_out_of_range_and_nan(trained_workdir, values, message):
    model = api.load(trained_workdir)
    with pytest.raises(ValueError, match=message):
        model.restore(values)
    with pytest.raises(ValueError, match=message.split(".*")[0]):
        export_loader.ExportedRestorer(None, {})(values)  # refused before the artifact runs
    with pytest.raises(DataError, match="NaN|must lie in"):  # the sampler (eval, sample mode)
        program.build_sampler(config())(model.params, values[None] * 2 - 1, np.zeros(2, np.uint32))


# --- the API's messages name its own arguments, not the command line's keys -----------------------

def test_api_errors_name_step_not_the_cli_key(tmp_path, trained_workdir):
    with pytest.raises(ConfigError) as err:
        api.load(str(tmp_path))
    assert "sample.checkpoint" not in str(err.value) and "pass step=" in str(err.value)
