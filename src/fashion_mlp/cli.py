"""`fashion-mlp`: one subcommand per pipeline stage; `dvc.yaml` calls only these.

This is the only module that knows Typer and the environment. Stage modules are imported inside
each command so `fashion-mlp --help` starts without loading torch or MLflow. A PipelineError is
printed as one line (`--verbose` shows the traceback) with exit code 1.
"""

import contextvars
import functools
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fashion_mlp.errors import PipelineError
from fashion_mlp.numerics import NUMERICS_ENV

# Default paths, the same ones dvc.yaml passes explicitly.
PARAMS_FILE = Path("params.yaml")
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
EVALUATION_DIR = Path("evaluation")
REPORTS_DIR = Path("reports")

app = typer.Typer(
    help="Reproducible, experiment-tracked MLPs on Fashion-MNIST. Run `dvc repro` for the "
    "whole pipeline; each command below is one of its stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Command = TypeVar("Command", bound=Callable[..., Any])
# Set by the --verbose option of the app callback, read by friendly_errors.
show_tracebacks = contextvars.ContextVar("show_tracebacks", default=False)
ParamsOption = Annotated[Path, typer.Option("--params", help="params file (YAML)")]
ModelArgument = Annotated[str, typer.Argument(help="model name, a key under `models` in params")]
ModelsDirOption = Annotated[Path, typer.Option(help="trained models")]
MetricsDirOption = Annotated[Path, typer.Option(help="evaluation metrics")]
TrackingUriOption = Annotated[
    str | None,
    typer.Option(
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI; overrides params mlflow.tracking_uri",
        show_default=False,
    ),
]
RootOption = Annotated[
    Path | None,
    typer.Option(
        envvar="DVC_ROOT",
        help="folder that a relative sqlite tracking URI is resolved against "
        "(set by DVC; default: the params file's folder)",
        show_default=False,
    ),
]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show tracebacks")] = False,
) -> None:
    # SIGTERM (from `kill`, a CI timeout, DVC's queue) and SIGHUP (a closed terminal or SSH
    # session) unwind like Ctrl-C, so atomic writes clean up and the MLflow run is marked
    # KILLED rather than left RUNNING.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    # Before torch loads: MKL reads this at its first computation. Strict mode makes results
    # independent of the thread count (see numerics.py); this process's children inherit it.
    for variable, value in NUMERICS_ENV.items():
        os.environ.setdefault(variable, value)
    show_tracebacks.set(verbose)
    if not verbose:
        # MLflow's SQL store logs each database error with a traceback before raising it; we
        # turn the error into one line (tracking.store_error), so its log would only repeat it.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def friendly_errors(command: Command) -> Command:
    """Turn a PipelineError into one line on stderr and exit code 1 (unless --verbose)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PipelineError as err:
            if show_tracebacks.get():
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: no output was written", err=True)
            raise typer.Exit(130) from None
        except OSError as err:
            # A file system refusing us (read-only, permissions, gone): name the path.
            if show_tracebacks.get():
                raise
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {where}{err.strerror or err}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _tracking_target(params: Any, tracking_uri: str | None, root: Path | None) -> Any:
    from fashion_mlp.tracking import TrackingTarget, resolve_tracking_uri

    settings = params.mlflow
    uri = tracking_uri or settings.tracking_uri
    root = root or params.source.resolve().parent
    return TrackingTarget(uri=resolve_tracking_uri(uri, root), experiment=settings.experiment)


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
    out_dir: Annotated[Path, typer.Option(help="where train.pt and test.pt go")] = PROCESSED_DIR,
) -> None:
    """Decode the IDX files once into uint8 image and int64 label tensors."""
    from fashion_mlp.preprocess import preprocess as decode

    for split, data in decode(raw_dir, out_dir).items():
        typer.echo(f"{out_dir / (split + '.pt')}: {len(data)} images")


@app.command()
@friendly_errors
def train(
    model: ModelArgument,
    params_file: ParamsOption = PARAMS_FILE,
    data_dir: Annotated[Path, typer.Option(help="preprocessed tensors")] = PROCESSED_DIR,
    out_dir: Annotated[
        Path | None, typer.Option(help="default: models/MODEL", show_default=False)
    ] = None,
    tracking_uri: TrackingUriOption = None,
    root: RootOption = None,
    dvc_stage: Annotated[str | None, typer.Option(envvar="DVC_STAGE", hidden=True)] = None,
    dvc_exp_name: Annotated[str | None, typer.Option(envvar="DVC_EXP_NAME", hidden=True)] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    tracking: Annotated[
        bool,
        typer.Option(help="log to MLflow; --no-tracking also skips run.json (for benchmarks)"),
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
    core_registry: Annotated[
        Path | None, typer.Option(envvar="FASHION_MLP_CORE_REGISTRY", hidden=True)
    ] = None,
) -> None:
    """Train one MLP and record params, per-epoch metrics, its data and the model in MLflow."""
    from fashion_mlp.params import load_params
    from fashion_mlp.threads import CoreShare
    from fashion_mlp.tracking import git_commit
    from fashion_mlp.train import train_model

    params = load_params(params_file)
    config = params.run_config(model)
    target = _tracking_target(params, tracking_uri, root) if tracking else None
    tags = {
        "git_commit": git_commit(params_file.resolve().parent),
        "dvc_stage": dvc_stage,
        "dvc_exp_name": dvc_exp_name,
    }
    history = train_model(
        config,
        data_dir,
        out_dir or MODELS_DIR / model,
        target,
        tags={key: value for key, value in tags.items() if value},
        cores=CoreShare(core_registry, threads),
        show_progress=progress,
    )
    last = history[-1]
    typer.echo(f"{model}: test accuracy {last['test_acc']:.4f} after {last['epoch']} epochs")


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
    tracking_uri: TrackingUriOption = None,
    root: RootOption = None,
) -> None:
    """Test accuracy, loss, per-class accuracy and confusion matrix, logged to the train run."""
    from fashion_mlp.evaluate import evaluate_model
    from fashion_mlp.params import load_params

    metrics = evaluate_model(
        model,
        model_dir or MODELS_DIR / model,
        data_dir,
        metrics_file or METRICS_DIR / f"{model}.json",
        out_dir or EVALUATION_DIR / model,
        _tracking_target(load_params(params_file), tracking_uri, root),
    )
    typer.echo(f"{model}: test accuracy {metrics['test_acc']:.4f}, loss {metrics['test_loss']:.4f}")


@app.command()
@friendly_errors
def compare(
    params_file: ParamsOption = PARAMS_FILE,
    models_dir: ModelsDirOption = MODELS_DIR,
    metrics_dir: MetricsDirOption = METRICS_DIR,
    out_dir: Annotated[Path, typer.Option(help="where the report goes")] = REPORTS_DIR,
    readme: Annotated[
        Path | None,
        typer.Option(help="also refresh this file's results table (between its markers)"),
    ] = None,
) -> None:
    """Compare all models of params `models`: a Markdown table and learning curves."""
    from fashion_mlp.compare import compare as compare_models
    from fashion_mlp.compare import markdown_table
    from fashion_mlp.params import load_params

    configs = load_params(params_file).run_configs()
    summary = compare_models(configs, models_dir, metrics_dir, out_dir, readme)
    typer.echo(markdown_table(summary))
    typer.echo(f"report: {out_dir / 'comparison.md'}, curves: {out_dir / 'learning_curves.png'}")


@app.command()
@friendly_errors
def register(
    params_file: ParamsOption = PARAMS_FILE,
    models_dir: ModelsDirOption = MODELS_DIR,
    metrics_dir: MetricsDirOption = METRICS_DIR,
    out: Annotated[Path, typer.Option(help="champion summary")] = REPORTS_DIR / "champion.json",
    tracking_uri: TrackingUriOption = None,
    root: RootOption = None,
) -> None:
    """Register the declared champion (params mlflow.champion) with the alias `champion`."""
    from fashion_mlp.params import load_params
    from fashion_mlp.register import register_champion

    params = load_params(params_file)
    target = _tracking_target(params, tracking_uri, root)
    champion = register_champion(params.mlflow.champion, models_dir, metrics_dir, out, target)
    typer.echo(
        f"{champion['uri']} -> {champion['model']} (version {champion['version']}, "
        f"test accuracy {champion['test_acc']:.4f})"
    )


@app.command()
@friendly_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(help="28x28 grayscale PNGs or IDX image files")],
    model: Annotated[
        str | None,
        typer.Option(
            help="MLflow model URI or checkpoint path; default: models:/EXPERIMENT@champion",
            show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, max=10, help="classes shown per image")] = 3,
    limit: Annotated[int, typer.Option(min=1, help="images shown per IDX file")] = 10,
    params_file: ParamsOption = PARAMS_FILE,
    tracking_uri: TrackingUriOption = None,
    root: RootOption = None,
) -> None:
    """Classify images and print the most likely classes with their probabilities."""
    from fashion_mlp.dataset import CLASS_NAMES
    from fashion_mlp.params import load_params
    from fashion_mlp.predict import class_probabilities, load_model, read_images
    from fashion_mlp.register import champion_uri

    batches = {path: read_images(path, limit) for path in paths}
    target = _tracking_target(load_params(params_file), tracking_uri, root)
    network = load_model(model or champion_uri(target.experiment), target)
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
def sweep(
    params_file: ParamsOption = PARAMS_FILE,
    data_dir: Annotated[Path, typer.Option(help="preprocessed tensors")] = PROCESSED_DIR,
    out_dir: Annotated[Path, typer.Option(help="where the reports go")] = REPORTS_DIR / "sweep",
    tracking_uri: TrackingUriOption = None,
    root: RootOption = None,
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
    from fashion_mlp.sweep import run_sweep

    params = load_params(params_file)
    target = _tracking_target(params, tracking_uri, root)
    ranked = run_sweep(params, data_dir, out_dir, target, ray_address, progress)
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
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Create the experiment and registered model on a team server, with EDIT for each user.

    Run as the server's admin (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).
    """
    from fashion_mlp.params import load_params
    from fashion_mlp.team import set_up_team

    target = _tracking_target(load_params(params_file), tracking_uri, None)
    users = users or []
    done = set_up_team(target, users)
    typer.echo(
        f"experiment {target.experiment!r} (id {done['experiment_id']}) and registered model "
        f"{done['registered_model']!r}: EDIT for {', '.join(users) or 'nobody yet'}; "
        f"open {done['url']}"
    )


@app.command("cleanup-runs")
@friendly_errors
def cleanup_runs(
    params_file: ParamsOption = PARAMS_FILE,
    tracking_uri: TrackingUriOption = None,
    root: RootOption = None,
) -> None:
    """Close runs left RUNNING by a training whose process died (killed, crashed, powered off).

    Only runs started on this host are judged (by process id and start time); their status
    becomes KILLED, tagged fashion_mlp.closed_by, and a model they left PENDING becomes FAILED.
    """
    from fashion_mlp.params import load_params
    from fashion_mlp.tracking import close_orphaned_runs

    target = _tracking_target(load_params(params_file), tracking_uri, root)
    closed = close_orphaned_runs(target)
    typer.echo(f"closed {len(closed)} runs" + (f": {', '.join(closed)}" if closed else ""))


@app.command()
@friendly_errors
def activations(
    out: Annotated[Path, typer.Option(help="the figure")] = REPORTS_DIR / "activations.png",
) -> None:
    """Plot ReLU, sigmoid and tanh with their autograd derivatives."""
    from fashion_mlp.activations import plot_activations

    plot_activations(out)
    typer.echo(f"figure: {out}")


if __name__ == "__main__":
    app()
