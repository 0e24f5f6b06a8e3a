"""team-setup: prepare a shared, authenticated MLflow server for a team.

Run once by the server's admin (MLFLOW_TRACKING_USERNAME/PASSWORD of the admin account), after
the team members' accounts exist. Creates the experiment (params `mlflow.experiment`) and the
registered model of the same name, both owned by the admin, and grants
each listed user EDIT on both: they can log runs, register versions and move the `champion`
alias, but not delete the experiment or the model. Without this step the first member whose
stage creates the experiment would own it, and everyone else (READ by default) would be locked
out.

MLflow's basic-auth gives MANAGE to whoever creates an experiment or a registered model, even
an account that may only read. If either already exists and the admin does not hold MANAGE on
it, another account made it first and keeps the power to delete it and every run or version in
it: team-setup refuses, naming that account and the way out, instead of granting permissions on
something the admin does not control.
"""

from dataclasses import dataclass
from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.store import Store, experiment_url, translated

TEAM_PERMISSION = "EDIT"
OWNER_PERMISSION = "MANAGE"
# How the admin frees a name another account took. A deleted experiment keeps its name until
# `mlflow gc` removes it from the database; a deleted registered model is gone at once.
REMOVALS = {
    "experiment": "delete it for good as the admin (`mlflow experiments delete -x {0}`, then on "
    "the server `mlflow gc --backend-store-uri DATABASE --experiment-ids {0}`)",
    "registered_model": "delete it as the admin (`MlflowClient().delete_registered_model('{0}')`)",
}


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
        import warnings

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
        client = self.store.client
        # Loading the basic-auth app imports MLflow's FastAPI server, whose Starlette warns about
        # its own deprecated module: a line on stderr nobody here can act on.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "starlette.middleware.wsgi is deprecated")
            auth = get_app_client("basic-auth", tracking_uri=target.uri)
        # The experiment first: a squatted one must not leave a new registered model behind.
        if not self.store.created_experiment and not _holds(
            auth, admin, "experiment", experiment_id
        ):
            raise self._squatted(auth, "experiment", experiment_id)
        try:
            client.create_registered_model(target.experiment)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            if not _holds(auth, admin, "registered_model", target.experiment):
                raise self._squatted(auth, "registered_model", target.experiment) from None
        resources = (("experiment", experiment_id), ("registered_model", target.experiment))
        for user in users:
            try:
                for kind, resource in resources:
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

    def _squatted(self, auth: Any, kind: str, resource: str) -> PipelineError:
        """The refusal for a resource another account created: who holds it, and the way out."""
        target = self.store.target
        holders = ", ".join(_managers(target.uri, auth, kind, resource)) or "another account"
        return PipelineError(
            f"the {kind.replace('_', ' ')} {target.experiment!r} on {target.shown_uri} already "
            f"exists and {holders} (not the admin) can delete it and everything in it; set "
            f"mlflow.experiment to a new name, or {REMOVALS[kind].format(resource)}, then run "
            "team-setup again"
        )


def _managers(uri: str, auth: Any, kind: str, resource: str) -> list[str]:
    """The accounts holding MANAGE on the resource: its creator and whoever it shared that with.
    Listing the accounts is for the admin alone, who runs team-setup."""
    from mlflow.server.auth.routes import LIST_USERS
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = http_request(get_default_host_creds(uri), LIST_USERS, "GET")
    accounts = verify_rest_response(response, LIST_USERS).json()["users"]
    return [a["username"] for a in accounts if _holds(auth, a["username"], kind, resource)]


def _holds(auth: Any, user: str, kind: str, resource: str) -> bool:
    """Whether `user` holds MANAGE on the resource (its creator does)."""
    from mlflow.exceptions import MlflowException

    try:
        permission = auth.get_user_permission(user, kind, resource)
    except MlflowException:
        return False
    return getattr(permission, "permission", None) == OWNER_PERMISSION
