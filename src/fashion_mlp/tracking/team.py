"""team-setup: prepare a shared, authenticated MLflow server for a team.

Run once by the server's admin (MLFLOW_TRACKING_USERNAME/PASSWORD of the admin account), after
the team members' accounts exist. Creates the experiment (params `mlflow.experiment`) and the
registered model of the same name, both owned by the admin, and grants
each listed user EDIT on both: they can log runs, register versions and move the `champion`
alias, but not delete the experiment or the model. Without this step the first member whose
stage creates the experiment would own it, and everyone else (READ by default) would be locked
out.

MLflow's basic-auth gives MANAGE to whoever creates an experiment or a registered model. If
either already exists and the admin does not hold MANAGE on it, another account made it first
and keeps the power to delete it and every run in it: team-setup refuses, naming it, instead of
granting permissions on something the admin does not control.
"""

from dataclasses import dataclass
from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.store import Store, experiment_url, translated

TEAM_PERMISSION = "EDIT"
OWNER_PERMISSION = "MANAGE"


@dataclass(frozen=True)
class TeamSetup:
    experiment_id: str
    registered_model: str
    url: str


class Team:
    def __init__(self, store: Store):
        self.store = store

    @translated
    def set_up(self, users: list[str]) -> TeamSetup:
        """Create the experiment and registered model if needed; grant `users` EDIT on both."""
        import os

        from mlflow.exceptions import MlflowException
        from mlflow.server import get_app_client

        target = self.store.target
        if not target.uri.startswith(("http://", "https://")):
            raise PipelineError(
                f"team-setup needs an authenticated MLflow server, not {target.shown_uri}; "
                "set MLFLOW_TRACKING_URI to it"
            )
        admin = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        experiment_id = self.store.experiment_id
        created_experiment = self.store.created_experiment
        client = self.store.client
        auth = get_app_client("basic-auth", tracking_uri=target.uri)
        created_model = True
        try:
            client.create_registered_model(target.experiment)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created_model = False
        resources = (
            ("experiment", experiment_id, created_experiment),
            ("registered_model", target.experiment, created_model),
        )
        for kind, resource, created in resources:
            if not created and not _holds(auth, admin, kind, resource):
                raise PipelineError(
                    f"the {kind.replace('_', ' ')} {target.experiment!r} on {target.shown_uri} "
                    f"was created by another account, which can delete it and everything in "
                    f"it; delete it as the admin (or choose another mlflow.experiment) and run "
                    "team-setup again"
                )
        for user in users:
            try:
                for kind, resource, _ in resources:
                    auth.grant_user_permission(user, kind, resource, TEAM_PERMISSION)
            except MlflowException as err:
                if "RESOURCE_DOES_NOT_EXIST" in str(err) or "not found" in str(err):
                    raise PipelineError(
                        f"MLflow tracking store {target.shown_uri}: user {user!r} has no "
                        "account; create it first (README: A team tracking server)"
                    ) from None
                raise
        return TeamSetup(
            experiment_id, target.experiment, experiment_url(target.uri, experiment_id)
        )


def _holds(auth: Any, user: str, kind: str, resource: str) -> bool:
    """Whether `user` holds MANAGE on the resource (its creator does)."""
    from mlflow.exceptions import MlflowException

    try:
        permission = auth.get_user_permission(user, kind, resource)
    except MlflowException:
        return False
    return getattr(permission, "permission", None) == OWNER_PERMISSION
