"""params.yaml is validated into typed objects; a bad value is one line naming key and value."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import PROJECT_ROOT, write_params
from fashion_mlp.cli import app
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import load_params


def test_project_params_give_the_d2l_setup():
    params = load_params(PROJECT_ROOT / "params.yaml")
    mlp1, mlp2 = params.run_config("mlp1"), params.run_config("mlp2")
    assert mlp1.model.hidden == [256] and mlp2.model.hidden == [256, 128]
    assert (mlp1.train.lr, mlp1.train.batch_size, mlp1.train.epochs) == (0.1, 256, 10)
    assert (mlp1.train.optimizer, mlp1.train.init_std) == ("sgd", 0.01)
    assert mlp1.model.describe() == "784-256-10 relu"


def test_model_entry_overrides_train_keys_for_that_model_only(tmp_path, params):
    params["models"]["mlp2"]["lr"] = 0.05
    loaded = load_params(write_params(tmp_path / "p.yaml", params))
    assert loaded.run_config("mlp2").train.lr == 0.05
    assert loaded.run_config("mlp1").train.lr == params["train"]["lr"]
    assert loaded.run_config("mlp2").flat()["lr"] == 0.05


def _set(params: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        params = params[part]
    params[leaf] = value


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.lr", -0.1, "train.lr = -0.1: Input should be greater than 0"),
        ("train.epochs", -3, "train.epochs = -3"),
        ("train.batch_size", 0, "train.batch_size = 0"),
        ("train.optimizer", "rmsprop", "train.optimizer = 'rmsprop'"),
        ("train.lr", "0.1", "train.lr = '0.1'"),
        ("models.mlp1.activation", "gelu", "models.mlp1.activation = 'gelu'"),
        ("models.mlp1.hidden", [], "models.mlp1.hidden = []"),
        ("models.mlp1.hidden", [256, 1.5], "models.mlp1.hidden.1 = 1.5"),
        ("models.mlp1.lr", 0, "models.mlp1.lr = 0"),
        ("models.mlp1.lerning_rate", 0.1, "models.mlp1.lerning_rate = 0.1: unknown key"),
        ("train.sead", 1, "train.sead = 1: unknown key (did you mean 'seed'?)"),
        ("models.mlp1.hiden", [8], "models.mlp1.hiden = [8]: unknown key (did you mean 'hidden'?)"),
        ("train.device", "tpu", "train.device = 'tpu': Input should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_bad_value_is_refused_naming_key_and_value(tmp_path, params, key, value, expected):
    _set(params, key, value)
    loaded = load_params(write_params(tmp_path / "p.yaml", params))
    with pytest.raises(PipelineError) as caught:
        loaded.run_config("mlp1")
    message = str(caught.value)
    assert expected in message
    assert message.startswith(str(tmp_path / "p.yaml"))
    assert "\n" not in message


def test_missing_key_is_named(tmp_path, params):
    del params["train"]["seed"]
    with pytest.raises(PipelineError, match=r"train\.seed: missing"):
        _ = load_params(write_params(tmp_path / "p.yaml", params)).train


def test_unknown_model_lists_known_ones(tmp_path, params):
    loaded = load_params(write_params(tmp_path / "p.yaml", params))
    with pytest.raises(PipelineError, match="no model 'mlp9' under models; known: mlp1, mlp2"):
        loaded.run_config("mlp9")


def test_unknown_section_and_unreadable_files_are_named(tmp_path, params):
    params["trian"] = {}
    with pytest.raises(PipelineError, match="unknown section 'trian'"):
        load_params(write_params(tmp_path / "p.yaml", params))
    with pytest.raises(PipelineError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_params(tmp_path / "broken.yaml")


def test_cli_stops_before_any_work_with_one_line_and_nonzero_exit(workdir: Path, params):
    params["models"]["mlp1"]["activation"] = "swish"
    write_params(workdir / "params.yaml", params)
    result = CliRunner().invoke(app, ["train", "mlp1", "--no-progress"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: models.mlp1.activation = 'swish': "
        "Input should be 'relu', 'sigmoid' or 'tanh'"
    ]
    assert not (workdir / "models").exists()
    assert not (workdir.parent / "mlflow.db").exists()
