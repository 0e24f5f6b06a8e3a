"""Real servers for the tests: PostgreSQL and an `mlflow server` with basic authentication.

Started once per test session (conftest's `team_server` fixture) on 127.0.0.1 only. The layout
is the README's team setup: PostgreSQL holds both MLflow's backend store (database `mlflow`)
and the auth user database (database `mlflow_auth`, via MLFLOW_AUTH_CONFIG_PATH); the server
proxies artifacts; every request needs a user and password.
"""

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from helpers.markers import require
from helpers.process import VENV_BIN, free_port, responds, wait_until

POSTGRES_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
MLFLOW = str(VENV_BIN / "mlflow")


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI runs as root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1; yields its base URI (no database)."""
    require(bool(POSTGRES_BINARIES), "PostgreSQL server not installed (apt-get install postgresql)")
    binaries = POSTGRES_BINARIES[-1].parent
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as
    # the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="fashion-mlp-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, log, port = folder / "data", folder / "server.log", free_port()
    subprocess.run(
        as_postgres_user(
            [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        as_postgres_user(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-o",
                options,
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    for database in ("mlflow", "mlflow_auth"):
        subprocess.run(
            [
                str(binaries.parent / "bin" / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "mlflow",
                database,
            ],
            check=True,
            capture_output=True,
        )
    try:
        yield f"postgresql://mlflow@127.0.0.1:{port}"
    finally:
        subprocess.run(
            as_postgres_user(
                [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            ),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class TeamServer:
    uri: str
    admin_password: str
    admin: str = "admin"

    def credentials(self, user: str, password: str) -> dict[str, str]:
        """The environment a team member's stages run with."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
        }

    def as_admin(self) -> dict[str, str]:
        return self.credentials(self.admin, self.admin_password)

    def add_user(self, name: str) -> str:
        """Create an account (as the admin); its password."""
        from mlflow.server import get_app_client

        password = secrets.token_urlsafe(12)
        with environment(self.as_admin()):
            get_app_client("basic-auth", tracking_uri=self.uri).create_user(name, password)
        return password


def mlflow_server_command(
    backend: str, artifacts: Path, port: int, app_name: str | None = None
) -> list[str]:
    """`mlflow server` on 127.0.0.1:`port` with one worker, proxying artifacts to a folder."""
    command = [MLFLOW, "server", *(["--app-name", app_name] if app_name else [])]
    command += ["--backend-store-uri", backend, "--artifacts-destination", str(artifacts)]
    return [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def environment(variables: dict[str, str]) -> AbstractContextManager:
    """Set variables for the duration (the MLflow client reads credentials from the env)."""
    return mock.patch.dict(os.environ, variables)


@contextmanager
def mlflow_team_server(postgres: str, folder: Path) -> Iterator[TeamServer]:
    """`mlflow server --app-name basic-auth` on PostgreSQL, artifacts proxied, on 127.0.0.1."""
    port, log = free_port(), folder / "server.log"
    admin_password = secrets.token_urlsafe(16)
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {postgres}/mlflow_auth\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "PATH": str(VENV_BIN) + os.pathsep + os.environ["PATH"],
    }
    with log.open("w") as stream:
        process = subprocess.Popen(
            mlflow_server_command(f"{postgres}/mlflow", folder / "artifacts", port, "basic-auth"),
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=env,
        )
    uri = f"http://127.0.0.1:{port}"

    try:
        wait_until(lambda: responds(f"{uri}/health"), "mlflow server", log, process=process)
        yield TeamServer(uri=uri, admin_password=admin_password)
    finally:
        process.terminate()
        process.wait(timeout=30)
