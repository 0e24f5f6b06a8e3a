"""The connection to an MLflow tracking store: where runs go, one client per process, one line
for every failure.

The embedded default is `sqlite:///mlflow.db` (MLflow 3's own default). A relative SQLite path is
resolved against the project root, not the working directory, and its artifacts go beside it in
`mlartifacts/`, so every stage (and `make ui`) sees one store wherever it runs from.

A tracking server that is down, refusing or rejecting our credentials fails a stage in seconds:
MLflow's own HTTP defaults (7 retries with exponential backoff, 120 s timeout) would keep a stage
waiting for minutes. Our bounds apply only where the environment does not set MLflow's variables.

`Store` is the one object that holds the client and the experiment. It connects once per
process, on first use or in the background (`connect_in_background`) while the caller loads data
and trains; every MLflow call of the other tracking modules runs through a method decorated with
`translated`, which turns whatever MLflow raises into one line naming the store.
"""

import functools
import logging
import os
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fashion_mlp.errors import PipelineError
from fashion_mlp.params import TrackingSettings

SQLITE_PREFIX = "sqlite:///"
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
# MLflow 3.17's UI opens an experiment on its GenAI overview unless the link asks for the training
# runs page. Its experiment tag `mlflow.experimentKind` does not choose the view in 3.17: the UI's
# GenAI / Model training switch is always on there, and the link's workflowType decides.
TRAINING_VIEW = "/runs?workflowType=machine_learning"

Method = TypeVar("Method", bound=Callable[..., Any])


@dataclass(frozen=True)
class TrackingTarget:
    uri: str
    experiment: str

    @property
    def artifact_location(self) -> str | None:
        """Artifacts of a local SQLite store live beside the database; a server decides its own."""
        if not self.uri.startswith(SQLITE_PREFIX):
            return None
        return (sqlite_path(self.uri).parent / "mlartifacts").as_uri()

    @property
    def shown_uri(self) -> str:
        """The URI without credentials (`http://alice:pw@host` -> `http://host`): what messages
        and logs show."""
        return redact(self.uri)


def resolve_target(settings: TrackingSettings, uri: str | None, root: Path) -> TrackingTarget:
    """The store and experiment a stage tracks into: `uri` (from --tracking-uri or
    MLFLOW_TRACKING_URI) over params `mlflow.tracking_uri`; a relative SQLite path is made
    absolute against `root` (the project root)."""
    chosen = uri or settings.tracking_uri
    shown = redact(chosen)
    if shown != chosen:
        # A URI is printed in links and error lines, kept in shell history and, from
        # params.yaml, in git: credentials in it would leak.
        raise PipelineError(
            f"the tracking URI {shown} holds a user name and password; take them out "
            "and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
        )
    _refuse_credentials_in_clear(chosen)
    if chosen.startswith(SQLITE_PREFIX):
        path = Path(urllib.parse.unquote(chosen.removeprefix(SQLITE_PREFIX)))
        if not path.is_absolute():
            # SQLAlchemy decodes %XX in the URL: the project's own path is encoded, or a folder
            # named `x%41y` would put the runs in `xAy/mlflow.db`.
            absolute = str((Path(root) / path).resolve())
            chosen = SQLITE_PREFIX + urllib.parse.quote(absolute, safe="/")
    return TrackingTarget(uri=chosen, experiment=settings.experiment)


# The variables MLflow's client takes credentials from.
CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def _refuse_credentials_in_clear(uri: str) -> None:
    """Credentials go to another host over TLS only: refused before the first request (which
    would carry them in clear), not after the server answers."""
    given = [name for name in CREDENTIAL_VARIABLES if os.environ.get(name)]
    parsed = urllib.parse.urlsplit(uri)
    if not given or parsed.scheme != "http" or _is_loopback(parsed.hostname or ""):
        return
    raise PipelineError(
        f"refusing to send {' and '.join(given)} to {redact(uri)} over plain http://, where "
        "anyone on the way can read them; use the server's https:// address (README: a team "
        "tracking server), or unset them for a server without accounts"
    )


def _is_loopback(host: str) -> bool:
    """Whether `host` is this machine: a loopback address, or a name that resolves only to
    loopback addresses."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses
    )


def sqlite_path(uri: str) -> Path:
    return Path(urllib.parse.unquote(uri.removeprefix(SQLITE_PREFIX)))


def drop_duplicates(found: list[str], kept: str, delete: Callable[[str], Any]) -> None:
    """Delete every id in `found` but `kept`: the copies a retried create left behind."""
    for duplicate in found:
        if duplicate != kept:
            delete(duplicate)


def redact(text: str) -> str:
    """Remove `user:password@` from every URL in `text`."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)


def experiment_url(server: str, experiment_id: str) -> str:
    """The link that opens an experiment's training runs in the MLflow UI."""
    return f"{redact(server).rstrip('/')}/#/experiments/{experiment_id}{TRAINING_VIEW}"


class Store:
    """One process's connection to the tracking store: the MLflow client and the experiment id
    (the experiment is created on first use)."""

    def __init__(
        self,
        target: TrackingTarget,
        create_experiment: bool = True,
        launched_by: str | None = None,
    ):
        self.target = target
        self._create = create_experiment
        # The run `mlflow run` opened around this process (its MLFLOW_RUN_ID), if any.
        self._launched_by = launched_by
        self._connection: tuple[Any, str] | None = None
        # True once this process created the experiment: it then holds no runs of anyone's.
        self.created_experiment = False
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def connect_in_background(self) -> None:
        """Start importing MLflow and opening the store now, on another thread; the first use
        of `client` or `experiment_id` waits for it (and raises what it raised)."""
        if self._thread is None and self._connection is None:
            # Imported here, before the thread starts: torch and MLflow both import it, and two
            # threads importing one module at once can see it half initialised.
            import numpy  # noqa: F401

            self._thread = threading.Thread(
                target=self._connect_recording, name="mlflow-connect", daemon=True
            )
            self._thread.start()

    @property
    def client(self) -> Any:
        return self._connected()[0]

    @property
    def experiment_id(self) -> str:
        return self._connected()[1]

    def _connect_recording(self) -> None:
        try:
            self._connect()
        except BaseException as err:  # handed to the thread that uses the store
            self._failure = err

    def connect(self) -> None:
        """Open the store now, in this thread, raising what opening it raises (an `mlflow run`
        of another experiment, say) before any work starts."""
        translated_call(self, self._connected)

    def ready(self) -> None:
        """Wait for the background connection, if one is on its way: until it is done, no
        other thread may import MLflow (a module two threads import at once can be seen half
        initialised)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _connected(self) -> tuple[Any, str]:
        self.ready()
        if self._failure is not None:
            failure, self._failure, self._thread = self._failure, None, None
            raise failure
        if self._connection is None:
            self._connect()
        assert self._connection is not None
        return self._connection

    def _connect(self) -> None:
        with self._lock:
            if self._connection is not None:
                return
            self._connection = translated_call(self, self._open)

    def _open(self) -> tuple[Any, str]:
        import mlflow

        for variable, value in HTTP_LIMITS.items():
            os.environ.setdefault(variable, value)
        # Our commands print what they did; MLflow's download bars and its system-metrics
        # monitor's start/stop notes would interleave with it.
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        # log_model and the system-metrics monitor read the process-wide URI and experiment: this
        # layer is the only one that sets them, to the store and experiment of the client.
        mlflow.set_tracking_uri(self.target.uri)
        with self._setup_lock():
            # Creating the client opens the store, which runs MLflow's migrations on a new one.
            client = mlflow.MlflowClient(self.target.uri)
            experiment = client.get_experiment_by_name(self.target.experiment)
            if experiment is None and self._create:
                experiment = self._create_experiment(client)
                self.created_experiment = True
        if experiment is None:
            raise PipelineError(
                f"MLflow experiment {self.target.experiment!r} does not exist in "
                f"{self.target.shown_uri}; run `dvc repro` (or `fashion-mlp train`) first"
            )
        if experiment.lifecycle_stage == "deleted":
            raise PipelineError(
                f"MLflow experiment {self.target.experiment!r} in {self.target.shown_uri} is "
                f"deleted; restore it with `MLFLOW_TRACKING_URI={self.target.shown_uri} mlflow "
                f"experiments restore --experiment-id {experiment.experiment_id}`, or set "
                "mlflow.experiment to another name"
            )
        if self._launched_by:
            self._check_launcher(client, experiment)
        # MLflow's model logging files a LoggedModel under the process-wide experiment.
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return client, experiment.experiment_id

    def _check_launcher(self, client: Any, experiment: Any) -> None:
        """`mlflow run` without --experiment-name opens its run in "Default": the stage's run
        would then sit in another experiment than the run users find in the UI."""
        launcher = client.get_run(self._launched_by)
        if launcher.info.experiment_id != experiment.experiment_id:
            name = client.get_experiment(launcher.info.experiment_id).name
            raise PipelineError(
                f"`mlflow run` opened run {self._launched_by} in experiment {name!r}, but this "
                f"project tracks into {self.target.experiment!r}; rerun it with "
                f"--experiment-name {self.target.experiment}"
            )

    def _create_experiment(self, client: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            client.create_experiment(
                self.target.experiment, artifact_location=self.target.artifact_location
            )
        except MlflowException as err:
            # Another stage created it since we looked: a server has no lock file for this.
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return client.get_experiment_by_name(self.target.experiment)

    def _setup_lock(self) -> AbstractContextManager:
        """For SQLite, the first connection creates the tables (MLflow's migrations) and maybe
        the experiment; parallel stages on a fresh store (`dvc queue start -j 2`) would race
        and fail with "table already exists". A lock file beside the database serialises it."""
        if not self.target.uri.startswith(SQLITE_PREFIX):
            return nullcontext()  # a server serialises its own setup
        from filelock import FileLock

        database = sqlite_path(self.target.uri)
        database.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(database.with_name(database.name + ".lock"))

    def create_once(
        self,
        create: Callable[[str], str],
        copies: Callable[[str], list[str]],
        delete: Callable[[str], Any],
    ) -> str:
        """`create(token)` something tagged with a fresh token (a run, a logged model) and
        return its id. MLflow's client retries a POST whose answer came too late (a slow server
        or proxy), and the server may have done the first one too: on a server, the copies
        found by the token (`copies(token)`) are deleted but the one kept. A SQLite store has
        no HTTP to retry, so nothing is searched."""
        token = uuid.uuid4().hex
        kept = create(token)
        if not self.target.uri.startswith(SQLITE_PREFIX):
            drop_duplicates(copies(token), kept, delete)
        return kept

    def error(self, err: BaseException) -> "StoreFailure":
        """One line for a store that fails: the URI, what went wrong and what to do."""
        return StoreFailure(f"MLflow tracking store {self.target.shown_uri}: {_reason(err)}")


class StoreFailure(PipelineError):
    """The tracking store failed (down, refusing, full): after one, a command makes no more
    calls to it, since each could wait out MLflow's retries again; the runs it leaves open are
    closed by `fashion-mlp cleanup-runs` once the store works."""


def translated(method: Method) -> Method:
    """Decorate a method of an object with a `store`: anything MLflow, the network or the
    database raises becomes the store's one-line PipelineError."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return translated_call(self.store, method, self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def translated_call(store: Store, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    store.ready()
    try:
        return function(*args, **kwargs)
    except PipelineError:
        raise
    except Exception as err:
        if not _from_the_store(err):
            raise
        raise store.error(err) from None


def _from_the_store(err: BaseException) -> bool:
    """MLflow's own errors, and the network's and database's below it (requests' errors are
    OSErrors; SQLAlchemy's carry its module name)."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException | OSError) or type(err).__module__.startswith(
        "sqlalchemy"
    )


def _reason(err: BaseException) -> str:
    """The useful end of MLflow's error chain, on one line, without credentials."""
    text = redact(" ".join(str(err).split())) or type(err).__name__
    refused = re.search(r"too many (\d{3}) error responses", text)
    if refused:
        return f"the server keeps answering HTTP {refused.group(1)} (retries exhausted)"
    if "error code 401" in text or "status code 401" in text:
        return (
            "the server refused the credentials (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to your account on it"
        )
    if "error code 403" in text or "PERMISSION_DENIED" in text:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "(anonymous)")
        return (
            f"permission denied for user {user} (HTTP 403); ask the server's admin to run "
            f"`fashion-mlp team-setup --user {user}`"
        )
    for cause, hint in (
        ("readonly database", "the database file is read-only; make it writable"),
        ("disk is full", "the disk holding it is full; free space and rerun"),
        ("unable to open database file", "its folder is missing or not writable"),
        ("No space left on device", "the disk holding it is full; free space and rerun"),
        ("Read-only file system", "it lies on a read-only file system"),
        (
            "CERTIFICATE_VERIFY_FAILED",
            "its TLS certificate is not trusted; set "
            "MLFLOW_TRACKING_SERVER_CERT_PATH to the server's CA certificate",
        ),
        (
            # nginx's answer to plain HTTP on its TLS port (deploy/nginx-mlflow.conf).
            "The plain HTTP request was sent to HTTPS port",
            "it speaks HTTPS only; use https:// in MLFLOW_TRACKING_URI and, if a password was "
            "set, change it: this request sent it unencrypted",
        ),
    ):
        if cause in text:
            return hint
    for cause in ("Connection refused", "Name or service not known", "timed out"):
        if cause in text:
            return f"cannot reach the server ({cause}); is it running? (retries exhausted)"
    return text[:300]
