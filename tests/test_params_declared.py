"""dvc.yaml tells the truth about params: each stage declares exactly the leaf keys it reads.

The reads are taken from the code, not from a list: every stage's command runs for real on a
tiny project, with the whole params file available, and `Params.reads` records each leaf key
the command took. A key read but not declared would let DVC skip a stage whose input changed;
a key declared but not read would rerun it for nothing. Where runs are recorded
(params.RECORDING_KEYS) is read by every tracking stage and declared by none: changing it
reruns nothing, as MLFLOW_TRACKING_URI does not. The sweep's own check is in test_sweep.py.
"""

import pytest
from typer.testing import CliRunner

from fashion_mlp.cli import app
from fashion_mlp.params import RECORDING_KEYS
from helpers.data import PROJECT_ROOT, declared_leaves, write_params

STAGES = [
    ("download", None, ["download", "--out-dir", "data/raw"]),
    ("preprocess", None, ["preprocess"]),
    ("configure", None, ["configure"]),
    ("train", "mlp1", ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"]),
    ("train", "mlp2", ["train", "mlp2", "--config", "configs/mlp2.json", "--no-progress"]),
    ("evaluate", "mlp1", ["evaluate", "mlp1"]),
    ("evaluate", "mlp2", ["evaluate", "mlp2"]),
    ("register", None, ["register"]),
    ("compare", None, ["compare"]),
    ("activations", None, ["activations"]),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict:
    """Each stage's command run in order on one tiny project; the leaf keys each one read."""
    import fashion_mlp.params as params_module
    from helpers.data import isolate, tiny_params, write_synthetic_raw

    folder = tmp_path_factory.mktemp("declared")
    checksums = write_synthetic_raw(folder / "source")
    params = tiny_params(folder / "source", checksums, "sqlite:///mlflow.db")
    params["models"]["mlp2"] |= {"lr": 0.3, "epochs": 3}  # an entry with keys of its own
    project = folder / "project"
    project.mkdir()
    write_params(project / "params.yaml", params)
    reads, original = {}, params_module.load_params
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate(monkeypatch, project)
        for stage, model, command in STAGES:
            loaded = []

            def recording(path, loaded=loaded):
                loaded.append(original(path))
                return loaded[-1]

            monkeypatch.setattr(params_module, "load_params", recording)
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 0, (stage, result.output)
            reads[(stage, model)] = set().union(*(p.reads for p in loaded)) - set(RECORDING_KEYS)
    return {"params": params, "reads": reads}


@pytest.mark.parametrize(
    ("stage", "model"),
    [(stage, model) for stage, model, _ in STAGES],
    ids=[f"{stage}@{model}" if model else stage for stage, model, _ in STAGES],
)
def test_each_stage_declares_exactly_the_leaf_params_it_reads(recorded, stage, model):
    declared = declared_leaves(PROJECT_ROOT / "dvc.yaml", stage, recorded["params"], model)
    assert recorded["reads"][(stage, model)] == declared


def test_the_trainings_read_no_params_their_config_file_is_their_input(recorded):
    """What makes `train.lr` rerun only the models without an lr of their own: only configure
    reads `train` and `models`; a training reads its configs/MODEL.json."""
    assert "models.mlp2.lr" in recorded["reads"][("configure", None)]
    assert recorded["reads"][("train", "mlp1")] == recorded["reads"][("train", "mlp2")] == set()
