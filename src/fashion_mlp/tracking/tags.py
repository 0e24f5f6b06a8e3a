"""The tags by which runs and logged models say what made them and who runs them: every module
of the tracking layer finds runs by these, never by their names (`run_name` is for people)."""

MODEL_TAG, STAGE_TAG = "fashion_mlp.model", "fashion_mlp.stage"
WEIGHTS_TAG, MODEL_ID_TAG = "fashion_mlp.weights_sha256", "fashion_mlp.model_id"
HOST_TAG, BOOT_TAG, PID_NAMESPACE_TAG = (
    "fashion_mlp.host",
    "fashion_mlp.boot_id",
    "fashion_mlp.pid_ns",
)
PID_TAG, STARTED_TAG = "fashion_mlp.pid", "fashion_mlp.pid_started"
CLOSED_TAG, CLOSED_ORPHANS_TAG = "fashion_mlp.closed_by", "fashion_mlp.closed_orphans"
ATTEMPTS_TAG = "fashion_mlp.attempts"
# A fresh token per create, to find the copy a retried POST left (Store.create_once).
CREATE_TOKEN_TAG = "fashion_mlp.create_token"
EVALUATED_TAG = "fashion_mlp.evaluated"
# On a LoggedModel: the SHA-256 of its files, as logged (registry.fetch checks it).
FILES_TAG = "fashion_mlp.files_sha256"
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"
OPEN_STATUSES = ("RUNNING", "SCHEDULED")


def run_name(model: str) -> str:
    """What a run is called in the MLflow UI: the model's name. Nothing finds runs by it."""
    return model
