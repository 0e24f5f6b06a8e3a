"""params.yaml is validated into typed objects; a bad value is one line naming key and value."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fashion_mlp.cli import app
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import load_params
from helpers.data import NEUTRAL_OPTIONS, PROJECT_ROOT, write_params


def test_the_d2l_models_keep_the_chapters_recipe_and_no_option():
    """d2l's MLP chapter: SGD lr 0.1, batch 256, 10 epochs, normal(0, 0.01), no extras."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    for name, hidden in (("mlp1", [256]), ("mlp2", [256, 128])):
        config = params.run_config(name)
        assert config.model.hidden == hidden and config.model.activation == "relu"
        train = config.train
        assert (train.optimizer, train.lr, train.momentum, train.weight_decay) == ("sgd", 0.1, 0, 0)
        assert (train.batch_size, train.epochs, train.init_std) == (256, 10, 0.01)
        assert train.lr_schedule == "constant"
        assert {key: getattr(train, key) for key in NEUTRAL_OPTIONS} == NEUTRAL_OPTIONS


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
        ("models.mlp1.activation", "swish", "models.mlp1.activation = 'swish'"),
        ("models.mlp1.hidden", [], "models.mlp1.hidden = []"),
        ("models.mlp1.hidden", [256, 1.5], "models.mlp1.hidden.1 = 1.5"),
        ("models.mlp1.lr", 0, "models.mlp1.lr = 0"),
        ("models.mlp1.lerning_rate", 0.1, "models.mlp1.lerning_rate = 0.1: unknown key"),
        ("train.sead", 1, "train.sead = 1: unknown key (did you mean 'seed'?)"),
        ("models.mlp1.hiden", [8], "models.mlp1.hiden = [8]: unknown key (did you mean 'hidden'?)"),
        ("train.device", "tpu", "train.device = 'tpu': Input should be 'auto', 'cpu' or 'cuda'"),
        ("train.lr", float("inf"), "train.lr = inf: Input should be a finite number"),
        ("train.init_std", float("nan"), "train.init_std = nan: Input should be a finite number"),
        ("models.mlp1.weight_decay", float("inf"), "models.mlp1.weight_decay = inf"),
        ("train.epochs", 10**30, "train.epochs = 10000000000000000000000000000"),
        ("train.seed", 2**64, "train.seed = 18446744073709551616"),
        ("models.mlp1.hidden", [2**40], "models.mlp1.hidden.0 = 1099511627776"),
        ("train.batch_norm", "yes", "train.batch_norm = 'yes': Input should be a valid boolean"),
        ("train.augment_shift", 30, "train.augment_shift = 30"),
        ("train.warmup_epochs", 3, "train: warmup_epochs = 3 is longer than epochs = 2"),
        ("models.mlp1.warmup_epochs", 3, "models.mlp1: warmup_epochs = 3 is longer than epochs"),
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


@pytest.mark.parametrize(
    "name",
    ["mlp1\n", "-rf", ".hidden", "a" * 65, "a/b", "mlp one", 7],
    ids=["trailing-newline", "option-like", "dot", "too-long", "slash", "space", "number"],
)
def test_model_names_unusable_as_folder_or_argument_are_refused(tmp_path, params, name):
    params["models"][name] = {"hidden": [8], "activation": "relu"}
    loaded = load_params(write_params(tmp_path / "p.yaml", params))
    with pytest.raises(PipelineError, match="a model name is 1 to 64 letters, digits") as caught:
        loaded.run_config("mlp1")
    assert "\n" not in str(caught.value).replace("\\n", "")


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 50.0\n")
    with pytest.raises(PipelineError) as caught:
        load_params(tmp_path / "p.yaml")
    assert str(caught.value) == (
        f"{tmp_path / 'p.yaml'}: not valid YAML (key 'lr' appears twice (lines 2 and 4); keep one)"
    )


def test_a_folder_or_a_non_utf8_file_as_params_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="is a folder; pass the params file itself"):
        load_params(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("train:\n  lr: 0.1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin1.yaml: not UTF-8 text \(byte 22: .*save it"):
        load_params(tmp_path / "latin1.yaml")


def test_cli_stops_before_any_work_with_one_line_and_nonzero_exit(workdir: Path, params):
    params["models"]["mlp1"]["activation"] = "swish"
    write_params(workdir / "params.yaml", params)
    result = CliRunner().invoke(app, ["train", "mlp1", "--no-progress"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: models.mlp1.activation = 'swish': "
        "Input should be 'relu', 'sigmoid', 'tanh', 'gelu' or 'elu'"
    ]
    assert not (workdir / "models").exists()
    assert not (workdir.parent / "mlflow.db").exists()
