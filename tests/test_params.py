"""params.yaml is validated into typed objects; a bad value is one line naming key and value."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fashion_mlp.choices import ACTIVATIONS, OPTIMIZERS, SCHEDULES
from fashion_mlp.cli import app
from fashion_mlp.documents import MAX_VALUES
from fashion_mlp.errors import PipelineError
from fashion_mlp.optimizers import make_optimizer, rate_factor
from fashion_mlp.params import load_params
from helpers.data import NEUTRAL_OPTIONS, PROJECT_ROOT, train_params, write_params

# Names no registry knows, whatever they are given next.
NOT_AN_OPTIMIZER = "-".join(OPTIMIZERS) + "-unknown"
NOT_AN_ACTIVATION = "-".join(ACTIVATIONS) + "-unknown"


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
        assert (config.model.dropout, config.model.batch_norm) == (0.0, False)


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
        ("train.optimizer", NOT_AN_OPTIMIZER, f"train.optimizer = {NOT_AN_OPTIMIZER!r}"),
        ("train.lr", "0.1", "train.lr = '0.1'"),
        (
            "models.mlp1.activation",
            NOT_AN_ACTIVATION,
            f"models.mlp1.activation = {NOT_AN_ACTIVATION!r}",
        ),
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
    with pytest.raises(PipelineError) as caught:
        load_params(write_params(tmp_path / "p.yaml", params)).run_config("mlp1")
    message = str(caught.value)
    assert expected in message
    assert message.startswith(str(tmp_path / "p.yaml"))
    assert "\n" not in message


def test_missing_key_is_named(tmp_path, params):
    del params["train"]["seed"]
    with pytest.raises(PipelineError, match=r"train\.seed: missing"):
        load_params(write_params(tmp_path / "p.yaml", params)).run_config("mlp1")


def test_a_typo_in_a_section_the_stage_does_not_read_is_still_refused(tmp_path, params):
    params["mlflow"]["experimnt"] = "other"
    loaded = write_params(tmp_path / "p.yaml", params)
    with pytest.raises(PipelineError, match=r"mlflow.experimnt = 'other': unknown key \(did you"):
        load_params(loaded)


def test_each_part_records_exactly_the_leaf_keys_it_read(tmp_path, params):
    params["models"]["mlp2"]["lr"] = 0.05
    path = write_params(tmp_path / "p.yaml", params)
    loaded = load_params(path)
    assert loaded.champion == "mlp2" and loaded.reads == {"mlflow.champion"}
    loaded = load_params(path)
    loaded.run_config("mlp2")
    assert "train.lr" not in loaded.reads and "models.mlp2.lr" in loaded.reads
    assert {f"train.{key}" for key in params["train"] if key != "lr"} <= loaded.reads
    assert {key for key in loaded.reads if key.startswith("models.")} == {
        "models.mlp2.hidden",
        "models.mlp2.activation",
        "models.mlp2.lr",
    }


@pytest.mark.parametrize(
    ("written", "value"),
    [("010", 10), ("1e-1", 0.1), ("0o10", 8)],
    ids=["leading-zero", "exponent-without-dot", "octal"],
)
def test_numbers_are_read_as_dvc_reads_them(tmp_path, params, written, value):
    """YAML 1.2, as DVC: PyYAML's YAML 1.1 reads `010` as 8 and `1e-1` as a string, while
    dvc.lock and `dvc params diff` record 10 and 0.1."""
    text = write_params(tmp_path / "p.yaml", params).read_text()
    key = "lr" if "e" in written else "epochs"
    text = text.replace(f"  {key}: {params['train'][key]}\n", f"  {key}: {written}\n", 1)
    (tmp_path / "p.yaml").write_text(text)
    assert getattr(load_params(tmp_path / "p.yaml").run_config("mlp1").train, key) == value


def test_yes_is_a_string_as_dvc_reads_it_so_a_boolean_key_refuses_it(tmp_path, params):
    text = write_params(tmp_path / "p.yaml", params).read_text()
    (tmp_path / "p.yaml").write_text(text.replace("augment_flip: false", "augment_flip: yes"))
    with pytest.raises(PipelineError, match=r"train.augment_flip = 'yes': Input should be a valid"):
        load_params(tmp_path / "p.yaml").run_config("mlp1")


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join(f'*a{n - 1}' for _ in range(10))}]" for n in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("train:\n  " + "\n  ".join(lines) + "\n")
    with pytest.raises(PipelineError) as caught:
        load_params(tmp_path / "bomb.yaml")
    assert f"expands to more than {MAX_VALUES:,} values" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_a_list_as_a_key_and_an_oversized_file_are_one_line(tmp_path):
    (tmp_path / "key.yaml").write_text("train:\n  ? [a, b]\n  : 1\n")
    with pytest.raises(PipelineError, match=r"a mapping key is \('a', 'b'\); keys must be plain"):
        load_params(tmp_path / "key.yaml")
    (tmp_path / "big.yaml").write_text("train: {}\n" + "#" * 2_000_000)
    with pytest.raises(PipelineError, match=r"big.yaml: larger than 1,000,000 bytes"):
        load_params(tmp_path / "big.yaml")


def test_an_error_shows_a_huge_value_cut_short(tmp_path, params):
    params["train"]["lr"] = "x" * 100_000
    loaded = load_params(write_params(tmp_path / "p.yaml", params))
    with pytest.raises(PipelineError) as caught:
        loaded.run_config("mlp1")
    assert "train.lr = 'xxx" in str(caught.value) and len(str(caught.value)) < 300


def test_every_registered_optimizer_and_schedule_is_accepted_and_built(tmp_path, params):
    """The names params accept are the registries' keys: each one trains with its own code."""
    from torch import nn

    model = nn.Linear(4, 2)
    built = set()
    for name in OPTIMIZERS:
        params["train"]["optimizer"] = name
        train = load_params(write_params(tmp_path / "p.yaml", params)).run_config("mlp1").train
        built.add(type(make_optimizer(model, train)).__name__)
    assert len(built) == len(OPTIMIZERS)
    for name in SCHEDULES:
        params["train"]["lr_schedule"] = name
        load_params(write_params(tmp_path / "p.yaml", params)).run_config("mlp1")
    params["train"]["optimizer"] = NOT_AN_OPTIMIZER
    with pytest.raises(PipelineError, match=f"train.optimizer = {NOT_AN_OPTIMIZER!r}: Input"):
        load_params(write_params(tmp_path / "p.yaml", params)).run_config("mlp1")


def test_the_rate_ramps_up_per_step_then_follows_the_schedule_per_epoch():
    factor = rate_factor(train_params(epochs=4, warmup_epochs=1, lr_schedule="cosine"), 4)
    rates = [factor(step) for step in range(16)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]  # warm-up, step by step
    # Then cosine over the 3 remaining epochs, one value per epoch.
    assert rates[4:] == pytest.approx([1.0] * 4 + [0.75] * 4 + [0.25] * 4)


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
    with pytest.raises(PipelineError, match="a model name is 1 to 64 letters, digits") as caught:
        load_params(write_params(tmp_path / "p.yaml", params)).run_config("mlp1")
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
    result = CliRunner().invoke(app, ["configure"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: models.mlp1.activation = 'swish': "
        "Input should be 'relu', 'sigmoid', 'tanh', 'gelu' or 'elu'"
    ]
    assert not (workdir / "configs").exists()


@pytest.mark.dvc
def test_dvc_exp_run_set_param_changes_only_that_line_of_params_yaml(tmp_path):
    """`dvc exp run -S` writes params.yaml back through its own YAML dumper: a file not in the
    form it writes would come back reformatted, its comments moved, after every experiment."""
    import difflib
    import shutil

    from helpers.process import run

    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  echo:\n    cmd: echo > out.txt\n    params: [train.lr]\n    outs: [out.txt]\n"
    )
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"]):
        run(command, tmp_path)
    run(["git", "commit", "-q", "-m", "params as committed"], tmp_path)
    run(["dvc", "exp", "run", "-S", "train.lr=0.2"], tmp_path)

    before = (PROJECT_ROOT / "params.yaml").read_text().splitlines()
    after = (tmp_path / "params.yaml").read_text().splitlines()
    changed = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)]
    assert [line for line in changed if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        "-  lr: 0.1             # learning rate",
        "+  lr: 0.2             # learning rate",
    ]
