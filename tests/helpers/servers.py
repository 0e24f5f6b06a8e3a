"""Real servers for the tests: PostgreSQL, an `mlflow server` with basic authentication, and
nginx in front of it with TLS.

Started once per test session (conftest's `team_server` fixture) on 127.0.0.1 only. The layout
is the README's team setup: PostgreSQL holds both MLflow's backend store (database `mlflow`)
and the auth user database (database `mlflow_auth`, via MLFLOW_AUTH_CONFIG_PATH); the server
proxies artifacts; every request needs a user and password; clients reach it only over HTTPS,
through the shipped deploy/nginx-mlflow.conf with a certificate from deploy/make-certs.sh.
"""

import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from helpers.markers import require
from helpers.process import VENV_BIN, free_port, responds, wait_until

POSTGRES_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
MLFLOW = str(VENV_BIN / "mlflow")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX = shutil.which("nginx", path=os.environ["PATH"] + os.pathsep + "/usr/sbin")


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
    ca_certificate: Path
    admin: str = "admin"

    def connection(self) -> dict[str, str]:
        """The environment that reaches the server and trusts its certificate, signed in as
        nobody."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(self.ca_certificate),
        }

    def credentials(self, user: str, password: str) -> dict[str, str]:
        """The environment a team member's stages run with."""
        return self.connection() | {
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
        with tls_proxy(f"127.0.0.1:{port}", folder / "proxy") as (public_uri, ca_certificate):
            yield TeamServer(
                uri=public_uri, admin_password=admin_password, ca_certificate=ca_certificate
            )
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def tls_proxy(upstream: str, folder: Path) -> Iterator[tuple[str, Path]]:
    """nginx with the shipped deploy/nginx-mlflow.conf in front of `upstream` (host:port), its
    certificate made by deploy/make-certs.sh; yields its https URI and the CA certificate that
    clients verify it with. It runs as the current user, every file it writes inside `folder`."""
    require(NGINX is not None, "nginx not installed (apt-get install nginx)")
    require(shutil.which("openssl") is not None, "openssl not installed (apt-get install openssl)")
    certificates = folder / "certificates"
    folder.mkdir()
    subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(certificates)], check=True, capture_output=True
    )
    port, log = free_port(), folder / "nginx.log"
    site = (DEPLOY / "nginx-mlflow.conf").read_text()
    for placeholder, value in {
        "@LISTEN@": f"127.0.0.1:{port}",
        "@SERVER_NAME@": "127.0.0.1",
        "@CERTIFICATE@": str(certificates / "server.crt"),
        "@CERTIFICATE_KEY@": str(certificates / "server.key"),
        "@MLFLOW@": upstream,
    }.items():
        site = site.replace(placeholder, value)
    (folder / "mlflow.conf").write_text(site)
    temporary = {
        kind: folder / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    # As root, nginx's workers would switch to `nobody`, who cannot write into pytest's private
    # tmp folder; any other user's nginx keeps its own user (and the directive would be ignored).
    user = "user root;\n" if os.geteuid() == 0 else ""
    # Debian's built-in paths (/var/lib/nginx, /var/log/nginx, /run/nginx.pid) belong to the
    # system's nginx: every one is set here, and errors go to stderr, our log.
    (folder / "nginx.conf").write_text(
        f"{user}pid {folder / 'nginx.pid'};\nerror_log stderr;\nworker_processes 1;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {folder / 'access.log'};\n"
        + "".join(f"    {kind}_temp_path {path};\n" for kind, path in temporary.items())
        + f"    include {folder / 'mlflow.conf'};\n}}\n"
    )
    with log.open("w") as stream:
        process = subprocess.Popen(
            [NGINX, "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    uri, ca_certificate = f"https://127.0.0.1:{port}", certificates / "ca.crt"
    try:
        wait_until(
            lambda: answers_over_tls(f"{uri}/health", ca_certificate), "nginx", log, process=process
        )
        yield uri, ca_certificate
    finally:
        process.terminate()
        process.wait(timeout=30)


def answers_over_tls(url: str, ca_certificate: Path) -> bool:
    """Whether a GET of `url` answers 200 over TLS verified against `ca_certificate`."""
    context = ssl.create_default_context(cafile=str(ca_certificate))
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except OSError:
        return False
