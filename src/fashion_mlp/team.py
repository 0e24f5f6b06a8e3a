"""Command `team-setup`: prepare a shared, authenticated MLflow server for a team.

Run once by the server's admin (MLFLOW_TRACKING_USERNAME/PASSWORD of the admin account), after
the team members' accounts exist. Creates the experiment (params `mlflow.experiment`) and the
registered model of the same name, both owned by the admin, and grants each listed user EDIT on
both: they can log runs, register versions and move the `champion` alias, but not delete the
experiment or the model. Without this step the first member whose stage creates the experiment
would own it, and everyone else (READ by default) would be locked out.

    MLFLOW_TRACKING_URI=http://mlflow.example.internal:5000 \
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \
        fashion-mlp team-setup --user alice --user bob --user ci-nightly
"""

from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking import TrackingTarget, connect, experiment_url, store_error

TEAM_PERMISSION = "EDIT"


def set_up_team(target: TrackingTarget, users: list[str]) -> dict[str, Any]:
    """Create the experiment and registered model if needed; grant `users` EDIT on both."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    if not target.uri.startswith(("http://", "https://")):
        raise PipelineError(
            f"team-setup needs an authenticated MLflow server, not {target.uri}; "
            "set MLFLOW_TRACKING_URI to it"
        )
    experiment_id = connect(target)
    client = mlflow.MlflowClient()
    auth = get_app_client("basic-auth", tracking_uri=target.uri)
    try:
        try:
            client.create_registered_model(target.experiment)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        for user in users:
            auth.grant_user_permission(user, "experiment", experiment_id, TEAM_PERMISSION)
            auth.grant_user_permission(user, "registered_model", target.experiment, TEAM_PERMISSION)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err) or "not found" in str(err):
            raise PipelineError(
                f"MLflow tracking store {target.uri}: a user in {', '.join(users)} has no "
                "account; create it first (README: A team tracking server)"
            ) from None
        raise store_error(target, err) from None
    return {
        "experiment_id": experiment_id,
        "registered_model": target.experiment,
        "users": users,
        "url": experiment_url(target.uri, experiment_id),
    }
