"""`fashion-mlp`: one subcommand per pipeline stage; `dvc.yaml` calls only these.

This is the only module that knows Typer. It reads the process environment for what belongs to
the process (signals, numerics, the MLflow store, DVC's stage and experiment names); the
tracking layer reads MLflow's own variables (credentials, HTTP limits), and threads.py the
core registry. Stage modules are imported inside each command, so `fashion-mlp --help` starts
without loading torch or MLflow. A PipelineError is printed as one line (`--verbose` shows the
traceback) with exit code 1; an interrupt prints one line with exit code 130.
"""

import atexit
import contextlib
import contextvars
import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fashion_mlp.errors import PipelineError
from fashion_mlp.layout import (
    CONFIGS_DIR,
    EVALUATION_DIR,
    METRICS_DIR,
    MODELS_DIR,
    PARAMS_FILE,
    PROCESSED_DIR,
    RAW_DIR,
    REPORTS_DIR,
)
from fashion_mlp.numerics import apply_numerics_env, overridden_note

app = typer.Typer(
    help="Reproducible, experiment-tracked MLPs on Fashion-MNIST. Run `dvc repro` for the "
    "whole pipeline; each command below is one of its stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Command = TypeVar("Command", bound=Callable[..., Any])
ParamsOption = Annotated[Path, typer.Option("--params", help="params file (YAML)")]
ModelArgument = Annotated[str, typer.Argument(help="model name, a key under `models` in params")]
ModelsDirOption = Annotated[Path, typer.Option(help="trained models")]
MetricsDirOption = Annotated[Path, typer.Option(help="evaluation metrics")]
ConfigsDirOption = Annotated[Path, typer.Option(help="the models' effective params")]


@dataclass(frozen=True)
class Settings:
    """The app's global options, shared by every command."""

    verbose: bool = False
    tracking_uri: str | None = None
    root: Path | None = None
    launched_by: str | None = None  # the run of `mlflow run` around this process


_settings: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "settings", default=None
)


def current() -> Settings:
    """The global options of the command being run."""
    return _settings.get() or Settings()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show tracebacks")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_TRACKING_URI",
            help="MLflow tracking URI; overrides params mlflow.tracking_uri",
            show_default=False,
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            envvar="DVC_ROOT",
            help="folder that a relative sqlite tracking URI is resolved against "
            "(set by DVC; default: the params file's folder)",
            show_default=False,
        ),
    ] = None,
    mlflow_run_id: Annotated[str | None, typer.Option(envvar="MLFLOW_RUN_ID", hidden=True)] = None,
) -> None:
    # SIGTERM (from `kill`, a CI timeout, DVC's queue) and SIGHUP (a closed terminal or SSH
    # session) unwind like Ctrl-C, so atomic writes clean up and the MLflow run is marked
    # KILLED rather than left RUNNING.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    apply_numerics_env()  # before torch loads
    _settings.set(
        Settings(verbose=verbose, tracking_uri=tracking_uri, root=root, launched_by=mlflow_run_id)
    )
    if not verbose:
        # MLflow's SQL store logs each database error with a traceback before raising it; the
        # tracking layer turns the error into one line, so its log would only repeat it.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def friendly_errors(command: Command) -> Command:
    """Turn a PipelineError into one line on stderr and exit code 1 (unless --verbose)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PipelineError as err:
            if current().verbose:
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: no output was written", err=True)
            raise typer.Exit(130) from None
        except OSError as err:
            # A file system refusing us (read-only, permissions, gone): name the path.
            if current().verbose:
                raise
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {where}{err.strerror or err}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _store(params_file: Path, create_experiment: bool = True, connect_now: bool = True) -> Any:
    """The tracking store of params `mlflow` (or --tracking-uri / MLFLOW_TRACKING_URI), its
    connection started in the background (`connect_now`), or at its first use."""
    from fashion_mlp.params import load_params
    from fashion_mlp.tracking.store import Store, resolve_target

    chosen = current()
    root = chosen.root or Path(params_file).resolve().parent
    target = resolve_target(load_params(params_file).tracking, chosen.tracking_uri, root)
    store = Store(target, create_experiment=create_experiment, launched_by=chosen.launched_by)
    if connect_now:
        store.connect_in_background()
    return store


def _workspace_champion(params_file: Path) -> Any:
    """The champion params name, with its weights as this workspace holds them (champion.py)."""
    from fashion_mlp.champion import workspace_champion
    from fashion_mlp.params import load_params

    champion = load_params(params_file).champion
    return workspace_champion(champion, MODELS_DIR, REPORTS_DIR / "champion.json")


def _git_commit(folder: Path) -> str | None:
    """The commit the code runs from, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


@app.command()
@friendly_errors
def download(
    params_file: ParamsOption = PARAMS_FILE,
    out_dir: Annotated[Path, typer.Option(help="where the gzip files go")] = RAW_DIR,
) -> None:
    """Get the four Fashion-MNIST files (local copy first, then the URLs), verified by MD5."""
    from fashion_mlp.download import download as download_files
    from fashion_mlp.params import load_params

    for file_name, source in download_files(load_params(params_file).data, out_dir).items():
        typer.echo(f"{out_dir / file_name}  <- {source}")


@app.command()
@friendly_errors
def preprocess(
    raw_dir: Annotated[Path, typer.Option(help="the downloaded gzip IDX files")] = RAW_DIR,
    out_dir: Annotated[Path, typer.Option(help="where the processed splits go")] = PROCESSED_DIR,
) -> None:
    """Decode the IDX files once into uint8 image and int64 label tensors."""
    from fashion_mlp.preprocess import preprocess as decode
    from fashion_mlp.splits import split_path

    for split, data in decode(raw_dir, out_dir).items():
        typer.echo(f"{split_path(out_dir, split)}: {len(data)} images")


@app.command()
@friendly_errors
def configure(
    params_file: ParamsOption = PARAMS_FILE,
    out_dir: ConfigsDirOption = CONFIGS_DIR,
) -> None:
    """Write each model's effective params (params `train` with its `models` entry applied)."""
    from fashion_mlp.artifacts import InputSnapshot
    from fashion_mlp.configure import configure as write_configs
    from fashion_mlp.params import load_params

    inputs = InputSnapshot(params_file)
    configs = write_configs(load_params(params_file), out_dir, inputs)
    typer.echo(f"{out_dir}: {', '.join(config.name for config in configs)}")


@app.command()
@friendly_errors
def train(
    model: ModelArgument,
    params_file: ParamsOption = PARAMS_FILE,
    config: Annotated[
        Path | None,
        typer.Option(
            help="the model's effective params, as `configure` wrote them (what DVC passes); "
            "default: computed from --params",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="preprocessed tensors")] = PROCESSED_DIR,
    out_dir: Annotated[
        Path | None, typer.Option(help="default: models/MODEL", show_default=False)
    ] = None,
    dvc_stage: Annotated[str | None, typer.Option(envvar="DVC_STAGE", hidden=True)] = None,
    dvc_exp_name: Annotated[str | None, typer.Option(envvar="DVC_EXP_NAME", hidden=True)] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars on a terminal")] = True,
    tracking: Annotated[
        bool, typer.Option(help="log to MLflow (--no-tracking: for benchmarks)")
    ] = True,
    threads: Annotated[
        int | None,
        typer.Option(
            envvar="FASHION_MLP_THREADS",
            min=1,
            help="fix the torch thread count (default: a fair share of the cores among the "
            "trainings running on this machine; results are the same either way)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train one MLP and record params, per-epoch metrics, its data and the model in MLflow."""
    from fashion_mlp.artifacts import InputSnapshot, config_path, read_run_config
    from fashion_mlp.epoch_metrics import held_out_acc
    from fashion_mlp.params import load_params
    from fashion_mlp.threads import CoreShare
    from fashion_mlp.tracking.runs import NullRuns, Runs
    from fashion_mlp.train import collapsed_warning, train_model

    # The run's own background thread connects once torch is loaded (train.train_model), but
    # under `mlflow run` the store is checked first: a run of another experiment is refused
    # before an epoch is trained.
    store = _store(params_file, connect_now=False) if tracking else None
    if store is not None and current().launched_by:
        store.connect()
    runs = Runs(store) if store is not None else NullRuns()
    if config is None:
        # By hand: what trains is what the params file says, never a config left from before.
        inputs = InputSnapshot(params_file)
        run_config = load_params(params_file).run_config(model)
    else:
        inputs = InputSnapshot(config)
        run_config = read_run_config(config)
        if run_config.name != model:
            raise PipelineError(
                f"{config}: holds the config of {run_config.name!r}, not {model!r}; pass "
                f"--config {config_path(CONFIGS_DIR, model)}"
            )
    tags = {
        "git_commit": _git_commit(Path(params_file).resolve().parent),
        "dvc_stage": dvc_stage,
        "dvc_exp_name": dvc_exp_name,
    }
    if note := overridden_note():
        typer.echo(note, err=True)
    history = train_model(
        run_config,
        data_dir,
        out_dir or MODELS_DIR / model,
        runs,
        tags={key: value for key, value in tags.items() if value},
        cores=CoreShare(fixed_threads=threads),
        inputs=inputs,
        show_progress=progress,
    )
    accuracy = history[-1][held_out_acc("test")]
    typer.echo(f"{model}: test accuracy {accuracy:.4f} after {len(history)} epochs")
    if warning := collapsed_warning(model, accuracy, run_config.train):
        typer.echo(f"warning: {warning}", err=True)


@app.command()
@friendly_errors
def evaluate(
    model: ModelArgument,
    params_file: ParamsOption = PARAMS_FILE,
    model_dir: Annotated[
        Path | None, typer.Option(help="default: models/MODEL", show_default=False)
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="preprocessed tensors")] = PROCESSED_DIR,
    metrics_file: Annotated[
        Path | None, typer.Option(help="default: metrics/MODEL.json", show_default=False)
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="default: evaluation/MODEL", show_default=False)
    ] = None,
) -> None:
    """Test metrics, per-class accuracy and confusion matrix, added to the training run."""
    from fashion_mlp.evaluate import evaluate_model
    from fashion_mlp.tracking.runs import Runs

    metrics = evaluate_model(
        model,
        model_dir or MODELS_DIR / model,
        data_dir,
        metrics_file or METRICS_DIR / f"{model}.json",
        out_dir or EVALUATION_DIR / model,
        Runs(_store(params_file, create_experiment=False)),
    )
    shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
    typer.echo(f"{model}: {shown}")


@app.command()
@friendly_errors
def compare(
    configs_dir: ConfigsDirOption = CONFIGS_DIR,
    models_dir: ModelsDirOption = MODELS_DIR,
    metrics_dir: MetricsDirOption = METRICS_DIR,
    out_dir: Annotated[Path, typer.Option(help="where the report goes")] = REPORTS_DIR,
    readme: Annotated[
        Path | None,
        typer.Option(help="also refresh this file's results table (between its markers)"),
    ] = None,
) -> None:
    """Compare every configured model: a Markdown table and learning curves."""
    from fashion_mlp.compare import compare as compare_models
    from fashion_mlp.compare import read_configs
    from fashion_mlp.tables import markdown_table

    summary = compare_models(read_configs(configs_dir), models_dir, metrics_dir, out_dir, readme)
    typer.echo(markdown_table(summary))
    typer.echo(f"report: {out_dir / 'comparison.md'}, curves: {out_dir / 'learning_curves.png'}")


@app.command()
@friendly_errors
def register(
    params_file: ParamsOption = PARAMS_FILE,
    models_dir: ModelsDirOption = MODELS_DIR,
    metrics_dir: MetricsDirOption = METRICS_DIR,
    out: Annotated[Path, typer.Option(help="champion summary")] = REPORTS_DIR / "champion.json",
    dvc_exp_name: Annotated[str | None, typer.Option(envvar="DVC_EXP_NAME", hidden=True)] = None,
) -> None:
    """Register the declared champion (params mlflow.champion) with the alias `champion`
    (not under `dvc exp run`: experiments leave the registry alone)."""
    from fashion_mlp.artifacts import InputSnapshot
    from fashion_mlp.params import load_params
    from fashion_mlp.register import register_champion
    from fashion_mlp.tracking.registry import Registry, champion_uri
    from fashion_mlp.tracking.runs import Runs

    inputs = InputSnapshot(params_file)
    params = load_params(params_file)
    champion, floor = params.champion, params.champion_min_test_acc
    store = _store(params_file, create_experiment=False)
    trained, version = register_champion(
        champion,
        floor,
        models_dir,
        metrics_dir,
        out,
        Runs(store),
        Registry(store),
        inputs,
        dvc_exp_name,
    )
    for refused in trained.refused:
        typer.echo(f"warning: {refused}", err=True)
    if version is None:
        typer.echo(
            f"experiment {dvc_exp_name}: registry left alone ({champion} checked, {out} "
            f"written); to promote it: dvc exp apply {dvc_exp_name} && dvc repro --force "
            "--single-item register"
        )
        return
    change = "now points at" if version.moved else "already pointed at"
    typer.echo(
        f"{champion_uri(version.registered_model)} {change} version {version.version}: "
        f"{champion} (run {version.run_id} by {trained.author}, logged model "
        f"{version.model_id})"
    )


@app.command()
@friendly_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(help="28x28 grayscale PNGs or IDX image files")],
    model: Annotated[
        str | None,
        typer.Option(
            help="registry URI (models:/...) or checkpoint file; default: "
            "models:/EXPERIMENT@champion",
            show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, max=10, help="classes shown per image")] = 3,
    limit: Annotated[int, typer.Option(min=1, help="images shown per IDX file")] = 10,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Classify images and print the most likely classes with their probabilities."""
    from fashion_mlp.dataset import CLASS_NAMES
    from fashion_mlp.predict import class_probabilities, load_model, read_images
    from fashion_mlp.tracking.registry import Registry

    batches = {path: read_images(path, limit) for path in paths}
    store = _store(params_file, create_experiment=False)
    workspace = functools.partial(_workspace_champion, params_file)
    network, answered = load_model(model, Registry(store), workspace)
    typer.echo(f"model: {answered}")
    for path, images in batches.items():
        probabilities = class_probabilities(network, images)
        for index, row in enumerate(probabilities):
            best = row.topk(top)
            ranked = ", ".join(
                f"{CLASS_NAMES[c]} {p:.3f}" for p, c in zip(best.values, best.indices, strict=True)
            )
            label = f"{path}[{index}]" if len(images) > 1 else str(path)
            typer.echo(f"{label}: {ranked}")


@app.command()
@friendly_errors
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="registry URI (models:/...); default: models:/EXPERIMENT@champion",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to listen on (plain HTTP: keep it local, or proxy it)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0: any free port")] = 5001,
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="request bodies over this many MiB are refused (413)")
    ] = 10.0,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Serve a registered model over HTTP (MLflow's scoring protocol): the champion once its
    weights are checked to be the workspace's; requests are validated before they reach it."""
    from fashion_mlp.champion import checked_model
    from fashion_mlp.serve import serve as serve_model
    from fashion_mlp.tracking.registry import Registry

    store = _store(params_file, create_experiment=False)
    workspace = functools.partial(_workspace_champion, params_file)
    checked = checked_model(Registry(store), model, workspace)
    max_body_bytes = int(max_body_mb * 2**20)
    serve_model(checked, host, port, typer.echo, max_body_bytes)


@app.command()
@friendly_errors
def ui(
    params_file: ParamsOption = PARAMS_FILE,
    port: Annotated[int, typer.Option(min=1, max=65535, help="where the UI listens")] = 5000,
) -> None:
    """The MLflow UI of the project's store: prints the link to its training runs, then serves
    until Ctrl-C (a tracking server: prints its link)."""
    from fashion_mlp.tracking.ui import run_ui

    raise typer.Exit(run_ui(_store(params_file), port, typer.echo))


share = typer.Typer(
    help="The team's DVC remote: results a colleague restores instead of retraining.",
    no_args_is_help=True,
)
app.add_typer(share, name="share")


@share.command("push")
@friendly_errors
def share_push(
    remote: Annotated[
        str | None, typer.Option(help="DVC remote (default: core.remote)", show_default=False)
    ] = None,
) -> None:
    """dvc push --run-cache, and the outputs of every run in the run-cache (sharing.py)."""
    from fashion_mlp.sharing import push

    shared = push(_project_root(), remote)
    typer.echo(
        f"pushed to DVC remote {shared.remote!r} ({shared.url}): {shared.transferred} files new "
        "there; colleagues: git pull && fashion-mlp share pull, then dvc repro --pull"
    )


@share.command("pull")
@friendly_errors
def share_pull(
    remote: Annotated[
        str | None, typer.Option(help="DVC remote (default: core.remote)", show_default=False)
    ] = None,
) -> None:
    """dvc pull --run-cache: the workspace's outputs and what every run in the team's
    run-cache gave (restored by `dvc repro --pull` instead of retrained)."""
    from fashion_mlp.sharing import pull

    shared = pull(_project_root(), remote)
    typer.echo(
        f"pulled from DVC remote {shared.remote!r} ({shared.url}): {shared.transferred} files; "
        "`dvc repro --pull` restores what a colleague already ran"
    )


@app.command()
@friendly_errors
def exps(
    width: Annotated[
        int | None,
        typer.Option(min=40, help="columns (default: the terminal's, or 120)", show_default=False),
    ] = None,
) -> None:
    """The DVC experiments: per experiment, the params it changed and the test accuracy of
    each model it retrained, beside the baseline's (`make exps`)."""
    from fashion_mlp.experiments import show_experiments, table

    for line in table(show_experiments(_project_root()), width):
        typer.echo(line)


def _project_root() -> Path:
    """The DVC project this command runs in (the folder holding .dvc/, from here up)."""
    folder = Path.cwd()
    for candidate in (folder, *folder.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    raise PipelineError(f"{folder}: not in a DVC project (no .dvc folder here or above)")


@app.command()
@friendly_errors
def samples(
    data_dir: Annotated[Path, typer.Option(help="preprocessed tensors")] = PROCESSED_DIR,
    out_dir: Annotated[Path, typer.Option(help="where the images go")] = Path("samples"),
    count: Annotated[int, typer.Option(min=1, max=1000, help="test images to write")] = 3,
) -> None:
    """Write test images as PNGs (for `predict`) and as a request body (for `serve`)."""
    from fashion_mlp.samples import REQUEST_FILE, write_samples

    written = write_samples(data_dir, out_dir, count)
    typer.echo(f"{out_dir}: {', '.join(path.name for path in written)}, {REQUEST_FILE}")


@app.command()
@friendly_errors
def sweep(
    params_file: ParamsOption = PARAMS_FILE,
    data_dir: Annotated[Path, typer.Option(help="preprocessed tensors")] = PROCESSED_DIR,
    out_dir: Annotated[Path, typer.Option(help="where the reports go")] = REPORTS_DIR / "sweep",
    ray_address: Annotated[
        str | None,
        typer.Option(
            envvar="RAY_ADDRESS",
            help="join this Ray cluster (default: an embedded local Ray)",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Search hyperparameters on Ray Tune (params `sweep`), selecting on a validation split."""
    from fashion_mlp.params import load_params
    from fashion_mlp.sweep.run import run_sweep

    if note := overridden_note():
        typer.echo(note, err=True)
    store = _store(params_file)
    ranked = run_sweep(load_params(params_file), data_dir, out_dir, store, ray_address, progress)
    best = ranked[0]
    typer.echo(
        f"{len(ranked)} trials; best: trial {best.plan.index}, validation accuracy "
        f"{best.val_acc:.4f}; report: {out_dir / 'sweep.md'}, entry: {out_dir / 'best.yaml'}"
    )


@app.command("team-setup")
@friendly_errors
def team_setup(
    users: Annotated[
        list[str] | None,
        typer.Option("--user", help="a team member's account (repeat the option)"),
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Create the experiment and registered model on a team server, with EDIT for each user.

    Run as the server's admin (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).
    """
    from fashion_mlp.tracking.team import Team

    users = users or []
    store = _store(params_file)
    done = Team(store).set_up(users)
    typer.echo(
        f"experiment {store.target.experiment!r} (id {done.experiment_id}) and registered model "
        f"{done.registered_model!r}: EDIT for {', '.join(users) or 'nobody yet'}; "
        f"open {done.url}"
    )


@app.command("cleanup-runs")
@friendly_errors
def cleanup_runs(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Close runs left open by a process that died (killed, crashed, powered off).

    Only runs started on this machine, since its last boot and in this PID namespace, are
    judged (by process id and start time); their status becomes KILLED, tagged
    fashion_mlp.closed_by, and a model they left PENDING becomes FAILED.
    """
    from fashion_mlp.tracking.runs import Runs

    closed = Runs(_store(params_file, create_experiment=False)).close_orphans()
    typer.echo(f"closed {len(closed)} runs" + (f": {', '.join(closed)}" if closed else ""))


@app.command()
@friendly_errors
def activations(
    out: Annotated[Path, typer.Option(help="the figure")] = REPORTS_DIR / "activations.png",
) -> None:
    """Plot every activation in the registry with its autograd derivative."""
    from fashion_mlp.activations import plot_activations

    plot_activations(out)
    typer.echo(f"figure: {out}")


def run() -> None:
    """The `fashion-mlp` console script: the app, then a QuickExit with the app's status."""
    status = QuickExit(code=1).arm()  # 1: what Python gives an exception that escapes
    try:
        app()
    except SystemExit as stop:
        status.code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        raise
    except KeyboardInterrupt:
        status.code = 130
        raise


@dataclass
class QuickExit:
    """An exit without the interpreter's teardown, for a process that loaded torch and MLflow.

    Tearing down the modules torch, MLflow and SQLAlchemy leave behind, object by object, took
    1.8 s of every train stage (0.4 s for torch alone; `make bench`, fixed cost by phase) and
    frees nothing the kernel would not free at once. `arm()` it before they load: its atexit
    handler then runs last, after Python has joined every thread and run every other handler
    (MLflow's, Ray's, temporary folders'). It closes logging and stdio and ends the process
    with `code`, the status Python would have given; with `code` None, Python exits as usual.
    The test suite's process exits the same way (tests/conftest.py).
    """

    code: int | None = None

    def arm(self) -> "QuickExit":
        atexit.register(self.exit_now)
        return self

    def exit_now(self) -> None:
        if self.code is None:
            return
        logging.shutdown()  # registered before this handler, so it would run after it
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
                stream.flush()
        os._exit(self.code)


if __name__ == "__main__":
    run()
