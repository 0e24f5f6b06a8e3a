"""Stage `configure`: each model's effective params, one file per model.

Reads params `train` and `models`. Writes `configs/MODEL.json` for every entry of `models`: the
`train` section with the model's own entry applied, validated. `train@MODEL` depends on its file
alone, not on params.yaml, so an edit reruns exactly the models whose effective params it
changes: `train.lr` reruns the models that do not set their own `lr`, and a model's entry reruns
that model only. The files are written with sorted keys: the same params give the same bytes.

    fashion-mlp configure --params params.yaml --out-dir configs
"""

from pathlib import Path

from fashion_mlp.artifacts import InputSnapshot, config_path, config_text
from fashion_mlp.atomic import atomic_folder
from fashion_mlp.params import Params, RunConfig


def configure(params: Params, out_dir: Path, inputs: InputSnapshot) -> list[RunConfig]:
    """Validate every model's params and write `out_dir` afresh (all files or none), unless
    `inputs` (the params file) changed meanwhile."""
    configs = params.run_configs()
    with atomic_folder(Path(out_dir)) as staging:
        for config in configs:
            config_path(staging, config.name).write_text(config_text(config), encoding="utf-8")
        inputs.verify()
    return configs
