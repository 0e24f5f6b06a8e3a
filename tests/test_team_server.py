"""The team setup: an authenticated `mlflow server` on PostgreSQL behind nginx with TLS, the
pipeline unchanged.

One server (basic-auth, PostgreSQL for runs and for users, artifacts proxied) serves the whole
test session (conftest's `team_server`), reached only through deploy/nginx-mlflow.conf over
HTTPS, with the certificate verified through MLFLOW_TRACKING_SERVER_CERT_PATH. Each test uses
its own experiment name. Skipped where PostgreSQL or nginx is not installed, except under CI
(`make test` installs them).
"""

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from fashion_mlp.preprocess import preprocess
from fashion_mlp.tracking.tags import MODEL_TAG
from helpers.data import synthetic_split, tiny_params, write_params, write_synthetic_raw
from helpers.plants import forge_run, plant_pickle_champion
from helpers.process import CLI, run, stage_env, train_at_once
from helpers.projects import configure_models, make_project, stages_run
from helpers.servers import TeamServer, environment

pytestmark = pytest.mark.server


def configure_and_preprocess(project: Path, source: Path) -> None:
    run([CLI, "configure"], project)
    run([CLI, "preprocess", "--raw-dir", str(source)], project)


def team_project(tmp_path: Path, experiment: str, **models: dict) -> Path:
    """A project tracking into `experiment`, champion mlp1; `models` replace tiny ones."""
    checksums = write_synthetic_raw(tmp_path / "source")
    params = tiny_params(tmp_path / "source", checksums, "sqlite:///mlflow.db")
    params["mlflow"] |= {"experiment": experiment, "champion": "mlp1"}
    params["models"] |= models
    return make_project(tmp_path / "project", params)


def team_setup(server: TeamServer, project: Path, *users: str) -> str:
    options = [option for user in users for option in ("--user", user)]
    return run([CLI, "team-setup", *options], project, env=server.as_admin())


def stage(args: list[str], project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a `fashion-mlp` command that may fail; its exit status and output for the test."""
    return subprocess.run([CLI, *args], cwd=project, env=env, capture_output=True, text=True)


def request(server: TeamServer, method: str, path: str, body: dict | None = None, auth=None):
    """A raw HTTP request, as `curl` would send it; returns the status code."""
    import base64

    headers = {"Content-Type": "application/json"}
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = json.dumps(body).encode() if body is not None else None
    call = urllib.request.Request(server.uri + path, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cafile=str(server.ca_certificate))
    try:
        with urllib.request.urlopen(call, timeout=10, context=context) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_anonymous_requests_are_refused_and_delete_nothing(team_server, tmp_path):
    project = team_project(tmp_path, "anonymous-refused")
    team_setup(team_server, project)
    with environment(team_server.as_admin()):
        import mlflow

        experiment = mlflow.MlflowClient(team_server.uri).get_experiment_by_name(
            "anonymous-refused"
        )
    search = "/api/2.0/mlflow/experiments/search"
    assert request(team_server, "POST", search, {"max_results": 10}) == 401
    delete = "/api/2.0/mlflow/experiments/delete"
    assert request(team_server, "POST", delete, {"experiment_id": experiment.experiment_id}) == 401
    alias = "/api/2.0/mlflow/registered-models/alias"
    assert request(team_server, "DELETE", alias, {"name": "anonymous-refused", "alias": "c"}) == 401
    with environment(team_server.as_admin()):
        still = mlflow.MlflowClient(team_server.uri).get_experiment(experiment.experiment_id)
    assert still.lifecycle_stage == "active"


@pytest.mark.dvc
def test_team_members_run_the_unchanged_pipeline_with_their_own_credentials(team_server, tmp_path):
    import mlflow
    import torch

    alice, bob = "alice-pipeline", "bob-pipeline"
    passwords = {user: team_server.add_user(user) for user in (alice, bob)}
    # The champion's weights (3 MB) are over nginx's default 1 MiB request body: they upload
    # only because deploy/nginx-mlflow.conf raises the limit.
    project = team_project(tmp_path, "team-pipeline", mlp1={"hidden": [1024], "activation": "relu"})
    assert "EDIT for alice-pipeline, bob-pipeline" in team_setup(team_server, project, alice, bob)

    alice_env = team_server.credentials(alice, passwords[alice])
    output = run(["dvc", "repro"], project, env=alice_env)
    assert {"train@mlp1", "train@mlp2", "evaluate@mlp1", "register"} <= stages_run(output)
    assert not (project / "mlflow.db").exists(), "the server, not the params' sqlite, is used"
    # Bob, a member too, is not locked out of what Alice's stages wrote into.
    bob_env = team_server.credentials(bob, passwords[bob])
    run(
        [
            CLI,
            "train",
            "mlp2",
            "--config",
            "configs/mlp2.json",
            "--no-progress",
            "--out-dir",
            "models/bob",
        ],
        project,
        env=bob_env,
    )

    with environment(alice_env):
        client = mlflow.MlflowClient(team_server.uri)
        mlflow.set_tracking_uri(team_server.uri)
        runs = mlflow.search_runs(experiment_names=["team-pipeline"], output_format="list")
        assert sorted(r.data.tags[MODEL_TAG] for r in runs) == ["mlp1", "mlp2", "mlp2"]
        assert {r.info.user_id for r in runs} == {alice, bob}
        for tracked in runs:
            assert tracked.info.status == "FINISHED"
            steps = [m.step for m in client.get_metric_history(tracked.info.run_id, "train_loss")]
            assert steps == [1, 2]
        first = next(
            r for r in runs if r.info.user_id == alice and r.data.tags[MODEL_TAG] == "mlp1"
        )
        assert "test_loss" in first.data.metrics  # logged by evaluate, same run
        artifacts = {a.path for a in client.list_artifacts(first.info.run_id, "evaluation")}
        assert "evaluation/confusion_matrix.png" in artifacts
        logged = f"models:/{first.data.tags['fashion_mlp.model_id']}"
        model = mlflow.pytorch.load_model(logged)  # through the server's artifact proxy
        assert model(torch.rand(3, 28, 28)).shape == (3, 10)
        champion = client.get_model_version_by_alias("team-pipeline", "champion")
        assert champion.run_id == first.info.run_id


def test_a_user_without_permission_cannot_write_and_is_told_so(team_server, tmp_path):
    import mlflow

    member, outsider = "carol-member", "mallory-outsider"
    member_password = team_server.add_user(member)
    outsider_password = team_server.add_user(outsider)
    project = team_project(tmp_path, "permissions")
    team_setup(team_server, project, member)
    configure_and_preprocess(project, tmp_path / "source")
    env = stage_env(**team_server.credentials(outsider, outsider_password))
    result = stage(
        ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"], project, env
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: MLflow tracking store {team_server.uri}: permission denied for user "
        f"{outsider} (HTTP 403); ask the server's admin to run `fashion-mlp team-setup --user "
        f"{outsider}`"
    )
    assert not (project / "models").exists()
    # Nor through the API: a member's run can be read, not deleted, by the outsider.
    member_env = team_server.credentials(member, member_password)
    run(
        [CLI, "train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"],
        project,
        env=member_env,
    )
    with environment(member_env):
        (member_run,) = mlflow.MlflowClient(team_server.uri).search_runs(
            [
                mlflow.MlflowClient(team_server.uri)
                .get_experiment_by_name("permissions")
                .experiment_id
            ]
        )
    run_id = member_run.info.run_id
    auth = (outsider, outsider_password)
    assert (
        request(team_server, "GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", auth=auth) == 200
    )
    delete = request(team_server, "POST", "/api/2.0/mlflow/runs/delete", {"run_id": run_id}, auth)
    assert delete == 403
    with environment(member_env):
        assert mlflow.MlflowClient(team_server.uri).get_run(run_id).info.lifecycle_stage == "active"


@pytest.mark.parametrize("password", ["wrong-password", None], ids=["wrong", "missing"])
def test_a_wrong_or_missing_password_fails_the_stage_with_one_line(team_server, tmp_path, password):
    project = team_project(tmp_path, "credentials")
    configure_and_preprocess(project, tmp_path / "source")
    env = stage_env(**team_server.connection())
    if password:
        env |= {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    result = stage(
        ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"], project, env
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: MLflow tracking store {team_server.uri}: the server refused the credentials "
        "(HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account "
        "on it"
    ]
    assert not (project / "models").exists()


def test_a_pickle_champion_planted_on_the_server_is_refused_and_never_runs(team_server, tmp_path):
    member = "dave-member"
    password = team_server.add_user(member)
    project = team_project(tmp_path, "planted")
    team_setup(team_server, project, member)
    env = team_server.credentials(member, password)
    marker = tmp_path / "payload-ran"
    # The attacker here is any account with EDIT: the registry must not be trusted either.
    with environment(env):
        plant_pickle_champion(team_server.uri, marker, experiment="planted")
    images, _ = synthetic_split(1, seed=0)
    Image.fromarray(images[0]).save(project / "garment.png")
    result = stage(["predict", "garment.png"], project, stage_env(**env))
    assert result.returncode == 1
    assert "refusing model models:/planted@champion: not a model fashion-mlp trained" in (
        result.stderr
    )
    assert not marker.exists()


def test_parallel_stages_share_one_new_experiment_on_the_server(team_server, tmp_path):
    """Three train stages at once, each finding no experiment and creating it: one wins, the
    others use it, and every run arrives."""
    import mlflow

    member = "erin-parallel"
    password = team_server.add_user(member)
    checksums = write_synthetic_raw(tmp_path / "source")
    params = tiny_params(tmp_path / "source", checksums, "sqlite:///unused.db")
    params["mlflow"]["experiment"] = "parallel-on-a-fresh-server"
    write_params(tmp_path / "params.yaml", params)
    preprocess(tmp_path / "source", tmp_path / "data/processed")
    configure_models(tmp_path / "params.yaml", tmp_path / "configs")
    env = team_server.credentials(member, password)
    train_at_once([("mlp1", copy) for copy in ("a", "b", "c")], tmp_path, stage_env(**env))
    with environment(env):
        mlflow.set_tracking_uri(team_server.uri)
        runs = mlflow.search_runs(
            experiment_names=[params["mlflow"]["experiment"]], output_format="list"
        )
    assert [run.info.status for run in runs] == ["FINISHED"] * 3


@pytest.mark.parametrize(
    ("scheme", "reason"),
    [
        (
            "https",
            "its TLS certificate is not trusted; set MLFLOW_TRACKING_SERVER_CERT_PATH to the "
            "server's CA certificate",
        ),
        (
            "http",
            "it speaks HTTPS only; use https:// in MLFLOW_TRACKING_URI and, if a password was "
            "set, change it: this request sent it unencrypted",
        ),
    ],
    ids=["https-without-the-ca", "plain-http"],
)
def test_a_client_without_the_ca_or_without_tls_stops_with_one_line(
    team_server, tmp_path, scheme, reason
):
    """No MLFLOW_TRACKING_SERVER_CERT_PATH: the self-signed certificate is refused. Plain HTTP
    to the proxy's TLS port: nginx refuses it. Either way the command stops with one line saying
    what to set."""
    project = team_project(tmp_path, "tls-refused")
    uri = team_server.uri.replace("https://", f"{scheme}://")
    env = stage_env(**team_server.as_admin()) | {"MLFLOW_TRACKING_URI": uri}
    del env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    # The first command that talks to the store; every other one fails in the same call.
    result = stage(["cleanup-runs"], project, env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: MLflow tracking store {uri}: {reason}"]


@pytest.mark.parametrize("squatted", ["experiment", "registered_model"])
def test_team_setup_refuses_a_name_another_account_took_first(team_server, tmp_path, squatted):
    """A read-only account creates the experiment or the registered model before the admin's
    team-setup, and so holds MANAGE on it: it could delete the team's runs or versions later.
    team-setup stops, naming that account and the way out, and grants nothing."""
    import mlflow
    from mlflow.server import get_app_client

    experiment = f"squatted-{squatted.replace('_', '-')}"
    squatter, member = f"mallory-{experiment}", f"alice-{experiment}"
    squatter_password = team_server.add_user(squatter)
    team_server.add_user(member)
    with environment(team_server.credentials(squatter, squatter_password)):
        client = mlflow.MlflowClient(team_server.uri)
        if squatted == "experiment":
            squatted_id = client.create_experiment(experiment)
            removal = (
                f"delete it for good as the admin (`mlflow experiments delete -x {squatted_id}`, "
                "then on the server `mlflow gc --backend-store-uri DATABASE --experiment-ids "
                f"{squatted_id}`)"
            )
        else:
            client.create_registered_model(experiment)
            removal = (
                f"delete it as the admin (`MlflowClient().delete_registered_model('{experiment}')`)"
            )
    project = team_project(tmp_path, experiment)

    result = stage(["team-setup", "--user", member], project, stage_env(**team_server.as_admin()))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: the {squatted.replace('_', ' ')} {experiment!r} on {team_server.uri} already "
        f"exists and {squatter} (not the admin) can delete it and everything in it; set "
        f"mlflow.experiment to a new name, or {removal}, then run team-setup again"
    ]
    with environment(team_server.as_admin()):
        auth = get_app_client("basic-auth", tracking_uri=team_server.uri)
        client = mlflow.MlflowClient(team_server.uri)
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        granted = {
            kind: auth.get_user_permission(member, kind, resource).permission
            for kind, resource in (("experiment", experiment_id), ("registered_model", experiment))
        }
        models = [model.name for model in client.search_registered_models()]
    assert granted == {"experiment": "READ", "registered_model": "READ"}
    if squatted == "experiment":
        assert experiment not in models, "a refused team-setup leaves no registered model behind"


@pytest.mark.dvc
def test_a_forged_run_by_another_member_never_becomes_champion(team_server, tmp_path):
    """Mallory, a member with EDIT like everyone, copies the tags of Alice's mlp1 run onto a
    newer run of her own whose model holds mlp2's files. Alice's promotion checks the bytes:
    Mallory's run is refused by name, and Alice's run stays the champion."""
    import mlflow

    alice, mallory = "alice-forged", "mallory-forged"
    passwords = {user: team_server.add_user(user) for user in (alice, mallory)}
    project = team_project(tmp_path, "team-forged")
    team_setup(team_server, project, alice, mallory)
    alice_env = team_server.credentials(alice, passwords[alice])
    run(["dvc", "repro"], project, env=alice_env)
    with environment(team_server.credentials(mallory, passwords[mallory])):
        forged = forge_run(team_server.uri, "mlp1", "mlp2", mallory, experiment="team-forged")
    promoted = stage(["register"], project, alice_env)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stderr.startswith(
        f"warning: refusing run {forged} of 'mlp1' by {mallory}: its logged weights (sha256 "
    )
    with environment(alice_env):
        client = mlflow.MlflowClient(team_server.uri)
        version = client.get_model_version_by_alias("team-forged", "champion")
        assert client.get_run(version.run_id).info.user_id == alice
