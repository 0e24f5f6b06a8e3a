"""Runs left open by a process that died (SIGKILL, an OOM kill, a power cut): who runs each run,
and closing the runs whose process is gone.

Every run carries tags saying who runs it: host, boot, PID namespace, pid and the process's
start time. A run whose process is gone from this machine is closed as KILLED, and the models it
left PENDING marked FAILED, by the next run of the same model and stage and by `fashion-mlp
cleanup-runs`. A run of another host, boot or PID namespace (a container: its pids are not ours)
is never judged.
"""

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fashion_mlp.tracking.store import Store
from fashion_mlp.tracking.tags import (
    BOOT_TAG,
    CLOSED_TAG,
    HOST_TAG,
    MODEL_TAG,
    OPEN_STATUSES,
    PID_NAMESPACE_TAG,
    PID_TAG,
    STAGE_TAG,
    STARTED_TAG,
)


def owner_tags() -> dict[str, str]:
    """Who runs this process: enough to tell later, from this machine, whether it still runs."""
    import psutil

    return {
        HOST_TAG: socket.gethostname(),
        BOOT_TAG: _boot_id(),
        PID_NAMESPACE_TAG: _pid_namespace(),
        PID_TAG: str(os.getpid()),
        STARTED_TAG: repr(psutil.Process().create_time()),
    }


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """True for a run started on this machine, since its last boot, in this PID namespace, by a
    process that no longer exists (a reused pid counts as gone: its start time differs)."""
    import psutil

    ours = owner_tags()
    if any(tags.get(key) != ours[key] for key in (HOST_TAG, BOOT_TAG, PID_NAMESPACE_TAG)):
        return False
    try:
        process = psutil.Process(int(tags[PID_TAG]))
        return repr(process.create_time()) != tags.get(STARTED_TAG)
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "unknown"


def open_runs(store: Store, query: str) -> list[Any]:
    """Runs matching `query` that are still RUNNING or SCHEDULED (MLflow's search takes one
    status at a time)."""
    return [
        found
        for status in OPEN_STATUSES
        for found in store.client.search_runs(
            [store.experiment_id],
            " and ".join([f"attributes.status = '{status}'", *([query] if query else [])]),
            max_results=10_000,
        )
    ]


def fail_pending_models(store: Store, run_id: str) -> None:
    """Mark FAILED the models `run_id` left PENDING: a model logged by a run that did not finish
    is not one to use."""
    from mlflow.entities import LoggedModelStatus

    client = store.client
    found = client.search_logged_models(
        [store.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    for logged in found:
        if logged.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)


def close_orphaned_runs(store: Store, model: str | None, stage: str | None) -> list[str]:
    """Mark KILLED every open run of the experiment (of `model` and `stage`, if given) whose
    process on this machine is gone, and fail the models it left PENDING; their ids."""
    if store.created_experiment:
        return []  # a store that had no experiment holds no runs to close
    query = " and ".join(
        f"tags.`{key}` = '{value}'"
        for key, value in ((MODEL_TAG, model), (STAGE_TAG, stage))
        if value is not None
    )
    closed = []
    for found in open_runs(store, query):
        if not owner_is_gone(found.data.tags):
            continue
        run_id = found.info.run_id
        store.client.set_tag(run_id, CLOSED_TAG, "its process was gone (found by fashion-mlp)")
        store.client.set_terminated(run_id, "KILLED")
        fail_pending_models(store, run_id)
        closed.append(run_id)
    return closed
