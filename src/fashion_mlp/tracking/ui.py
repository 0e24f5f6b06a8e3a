"""The MLflow UI of the project's store (`make ui`, `fashion-mlp ui`): one link, then quiet.

For a local SQLite store it starts `mlflow server` on 127.0.0.1 with one worker and no job
runner (MLflow's default is four workers and a dozen job processes: too much for a laptop and
never used here), and prints the link that opens the project's experiment on its training runs
(`workflowType=machine_learning`; without it MLflow 3 opens an experiment on its GenAI overview).
The server's own start-up lines and Python warnings are not shown; its errors are. For a
tracking server (MLFLOW_TRACKING_URI), it prints that server's link and starts nothing.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.store import SQLITE_PREFIX, Store, experiment_url

# What the server prints that nobody needs: start-up notes, INFO lines, warnings and the source
# lines Python prints under a warning.
QUIET = ("INFO", "WARNING", "Registry store URI not provided", "[MLflow] Security middleware")


def run_ui(store: Store, port: int, announce: Callable[[str], None]) -> int:
    """Serve the store's UI until Ctrl-C (a local store), or name the server's; an exit code."""
    uri = store.target.uri
    if not uri.startswith(SQLITE_PREFIX):
        announce(f"open {experiment_url(uri, store.experiment_id)}")
        return 0
    server = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--uvicorn-opts",
        "--log-level warning",
    ]
    env = os.environ | {"PYTHONWARNINGS": "ignore", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    announce(f"open {experiment_url(server, store.experiment_id)}   (Ctrl-C stops the UI)")
    try:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as err:
        raise PipelineError(f"cannot start the MLflow UI ({err.strerror or err})") from None
    try:
        shown_trace = False
        for line in process.stdout:
            # A traceback is shown whole; otherwise only what is not start-up chatter.
            shown_trace = shown_trace or line.startswith("Traceback")
            if shown_trace or not (line.startswith((" ", "\t")) or any(q in line for q in QUIET)):
                announce(line.rstrip("\n"))
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        return 0
