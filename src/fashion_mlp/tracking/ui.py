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
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.store import SQLITE_PREFIX, Store, experiment_url

# What the server prints that nobody needs: start-up notes, INFO lines, warnings and the source
# lines Python prints under a warning.
QUIET = ("INFO", "WARNING", "Registry store URI not provided", "[MLflow] Security middleware")


def run_ui(store: Store, port: int, announce: Callable[[str], None]) -> int:
    """Serve the store's UI until Ctrl-C (a local store), or name the server's; an exit code.
    The link is printed once the UI answers, so that it opens at the first click."""
    uri = store.target.uri
    if not uri.startswith(SQLITE_PREFIX):
        announce(f"open {experiment_url(uri, store.experiment_id)}")
        return 0
    server = f"http://127.0.0.1:{port}"
    if _answers(server):
        raise PipelineError(
            f"port {port} is taken (another `make ui`?): open its page, or choose another port "
            "with `make ui MLFLOW_PORT=5001`"
        )
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
    try:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as err:
        raise PipelineError(f"cannot start the MLflow UI ({err.strerror or err})") from None
    relay = threading.Thread(target=_relay_errors, args=(process.stdout, announce), daemon=True)
    relay.start()
    try:
        while not _answers(server):
            if process.poll() is not None:
                relay.join()
                return process.returncode
            time.sleep(0.2)
        announce(f"open {experiment_url(server, store.experiment_id)}   (Ctrl-C stops the UI)")
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        return 0


def _answers(server: str) -> bool:
    try:
        with urllib.request.urlopen(f"{server}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _relay_errors(output: TextIO, announce: Callable[[str], None]) -> None:
    """Pass on what the server prints, but its start-up chatter; a traceback whole."""
    in_traceback = False
    for line in output:
        in_traceback = in_traceback or line.startswith("Traceback")
        if in_traceback or not (line.startswith((" ", "\t")) or any(q in line for q in QUIET)):
            announce(line.rstrip("\n"))
