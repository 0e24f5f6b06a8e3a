"""Which run trained a checkpoint: found by the SHA-256 of its weights, which the run carries as
a tag (so no run id is kept in any file), and confirmed by the bytes of the model it logged.

A tag is a claim: any account that may edit the experiment can create a run whose tags copy a
genuine one's, and log another network's files under it. So a run found by its tags counts only
if the checkpoint logged with its model (models.py) has that very SHA-256 (and, for `register`,
if the logged graph holds exactly those tensors). A run that fails the check is refused by name
and author, and the newest genuine run is used; with none, nothing is.
"""

from dataclasses import dataclass

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.models import checked_checkpoint, downloaded, refuse_unsafe_model
from fashion_mlp.tracking.store import Store
from fashion_mlp.tracking.tags import (
    EVALUATED_TAG,
    FILES_TAG,
    MODEL_ID_TAG,
    MODEL_TAG,
    STAGE_TAG,
    WEIGHTS_TAG,
)


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run, its author, the model it logged, and the runs refused on the
    way (one line each: a run whose tags claimed these weights and whose model did not hold
    them)."""

    run_id: str
    model_id: str
    epochs: int
    author: str
    refused: tuple[str, ...] = ()


def trained(
    store: Store, model: str, digest: str, evaluated: bool = False, graph: bool = False
) -> TrainedRun:
    """The newest finished run that trained `model` into the checkpoint with SHA-256 `digest`
    (with `evaluated`, one that holds its evaluation), confirmed by its logged model's bytes
    (with `graph`, its graph's tensors too)."""
    client = store.client
    query = (
        f"attributes.status = 'FINISHED' and tags.`{MODEL_TAG}` = '{model}' "
        f"and tags.`{STAGE_TAG}` = 'train' and tags.`{WEIGHTS_TAG}` = '{digest}'"
    )
    found = client.search_runs(
        [store.experiment_id], query, order_by=["attributes.start_time DESC"]
    )
    if evaluated:
        found = [run for run in found if run.data.tags.get(EVALUATED_TAG)]
    if not found:
        raise _none_found(store, model, digest, query, evaluated)
    refused = []
    for run in found:
        author = run.info.user_id or "an unknown user"
        name = f"run {run.info.run_id} of {model!r} by {author}"
        try:
            _confirm(store, run.data.tags.get(MODEL_ID_TAG, ""), digest, name, graph)
        except PipelineError as err:
            refused.append(str(err))
            continue
        return TrainedRun(
            run_id=run.info.run_id,
            model_id=run.data.tags.get(MODEL_ID_TAG, ""),
            epochs=int(run.data.params.get("epochs", "0")),
            author=author,
            refused=tuple(refused),
        )
    raise PipelineError(
        f"{refused[0]}; no run whose logged model holds these weights: retrain it into this "
        f"store (`dvc repro --force train@{model}`)"
    )


def _confirm(store: Store, model_id: str, digest: str, name: str, graph: bool) -> None:
    if not model_id:
        raise PipelineError(f"refusing {name}: it logged no model")
    logged = store.client.get_logged_model(model_id)
    with downloaded(store, model_id) as folder:
        refuse_unsafe_model(name, folder, logged.tags.get(FILES_TAG))
        checked_checkpoint(name, folder, digest, graph)


def _none_found(store: Store, model: str, digest: str, query: str, evaluated: bool) -> Exception:
    from mlflow.entities import ViewType

    deleted = store.client.search_runs(
        [store.experiment_id], query, ViewType.DELETED_ONLY, max_results=1
    )
    if deleted:
        run_id = deleted[0].info.run_id
        return PipelineError(
            f"the run that trained {model!r} into these weights ({run_id}) is deleted in "
            f"{store.target.shown_uri}; restore it with `mlflow runs restore --run-id "
            f"{run_id}`, or retrain: `dvc repro --force train@{model}`"
        )
    what = "evaluated run" if evaluated else "finished run"
    return PipelineError(
        f"no {what} of {model!r} with these weights (sha256 {digest[:12]}...) in "
        f"experiment {store.target.experiment!r} of {store.target.shown_uri}; "
        f"train it into this store: `dvc repro --force train@{model}`"
    )
