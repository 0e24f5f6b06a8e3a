"""Commands `share push` and `share pull`: the team's DVC remote, so a colleague gets the exact
results without retraining (README "Sharing results").

`share push` is `dvc push --run-cache`, plus the outputs of every run in DVC's run-cache. DVC 3
pushes a run-cache entry (what a stage's inputs gave) but not the outputs it names, unless they
belong to the workspace's own commit; without them, a colleague's `dvc repro --pull` cannot
restore a stage that someone else ran with other params, and retrains it. Since every output of
the pipeline is a function of its inputs (byte-reproducible), a restored stage is exactly what
running it would give. `share pull` is `dvc pull --run-cache`.

A remote that fails (unreachable, a host key not yet trusted, a key it refuses, a full disk,
a connection that broke mid-transfer) is one line naming the remote and the fix; what was
transferred stays, and running the command again sends or fetches the rest. Nothing here
touches the workspace or the local cache, beyond what `dvc pull` checks out.

    fashion-mlp share push        # after dvc repro, before git push
    fashion-mlp share pull        # after git clone or git pull
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.errors import PipelineError


@dataclass(frozen=True)
class Shared:
    remote: str  # its name
    url: str
    transferred: int  # files sent or fetched (entries of the run-cache included)


def push(root: Path, remote: str | None = None) -> Shared:
    """`dvc push --run-cache`, then the outputs every run-cache entry names."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo, _failures_named(repo, remote) as (name, url):
        count = repo.push(remote=name, run_cache=True)
        entries = [
            (path.parent.name, path.name)
            for path in Path(repo.stage_cache.cache_dir).rglob("*")
            if path.is_file()
        ]
        for odb, objects in repo.stage_cache.get_used_objs(entries).items():
            result = repo.cloud.push(list(objects), remote=name, odb=odb)
            if result.failed:
                raise OSError(f"{len(result.failed)} files could not be sent")
            count += len(result.transferred)
    return Shared(name, url, count)


def pull(root: Path, remote: str | None = None) -> Shared:
    """`dvc pull --run-cache`: the workspace's outputs and every run-cache entry (a stage run
    with other params is then restored by `dvc repro --pull`, its outputs fetched as needed)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo, _failures_named(repo, remote) as (name, url):
        result = repo.pull(remote=name, run_cache=True)
    return Shared(name, url, result["stats"]["fetched"])


@contextmanager
def _failures_named(repo: Any, remote: str | None) -> Iterator[tuple[str, str]]:
    """The remote's name and URL; any failure of the block becomes one line naming them."""
    config = repo.config
    name = remote or config["core"].get("remote")
    if not name:
        raise PipelineError(
            "no DVC remote is configured: add the team's with `dvc remote add -d team "
            'ssh://USER@HOST/PATH` (README "Sharing results")'
        )
    if name not in config["remote"]:
        known = ", ".join(sorted(config["remote"])) or "none"
        raise PipelineError(f"no DVC remote named {name!r} (configured: {known})")
    url = config["remote"][name].get("url", "?")
    # DVC logs a line per file it failed to send (and sends on: the run-cache's entries): kept
    # here, so that the command says one line, and fails if any was logged.
    logged = _ErrorsKept()
    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_objects", "dvc_data")]
    saved = [(logger.handlers, logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [logged], False
        logger.setLevel(logging.ERROR)
    try:
        yield name, url
        if logged.errors:
            raise OSError(logged.errors[0])
    except PipelineError:
        raise
    except Exception as err:  # DVC, asyncssh and the OS: each kind named below
        reason = _reason(err, logged.errors, name, url)
        raise PipelineError(f"DVC remote {name!r} ({url}): {reason}") from None
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


class _ErrorsKept(logging.Handler):
    """Keeps the messages of the error records that reach it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def handle(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            cause = record.exc_info[1] if record.exc_info else None
            detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
            self.errors.append(record.getMessage() + detail)
        return True


def _reason(err: BaseException, logged: list[str], name: str, url: str) -> str:
    """What went wrong, from the error, its causes and what DVC logged, and what to do."""
    chain, seen = [], err
    while seen is not None:
        chain.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    text = " | ".join(" ".join(part.split()) for part in [*chain, *logged])
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    for causes, hint in (
        (
            ("Connect call failed", "Connection refused", "Errno 111", "Name or service"),
            f"cannot connect to {host}; is its SSH server running (or the host name right)? "
            "rerun once it answers",
        ),
        (
            ("Host key is not trusted", "HostKeyNotVerifiable", "not trusted"),
            f"{host}'s host key is not in ~/.ssh/known_hosts; check its fingerprint with the "
            f"admin, then add it: ssh-keyscan {_keyscan_args(host)} >> ~/.ssh/known_hosts",
        ),
        (
            ("SFTPPermissionDenied", "SFTP permission denied"),
            "its account may not write to its folder; on the host, deploy/dvc-remote.sh "
            "FOLDER ACCOUNT makes the folder the account's own",
        ),
        (
            ("Permission denied", "PermissionDenied", "No more authentication methods"),
            f"the server refused the key; point DVC at one it authorizes: dvc remote modify "
            f"--local {name} keyfile ~/.ssh/YOUR_KEY",
        ),
        (
            # SFTP reports a full disk as a bare "Failure" (SSH_FX_FAILURE): no errno crosses.
            ("No space left", "Errno 28", "SFTPFailure"),
            "the remote refused to write (its disk is full, or a quota is reached); free "
            "space there and rerun: what arrived is kept",
        ),
        (
            ("Connection lost", "ConnectionLost", "Connection reset", "Broken pipe", "closed"),
            "the connection broke mid-transfer; rerun: what arrived is kept, the rest is sent",
        ),
        (
            ("timed out", "TimeoutError"),
            f"{host} did not answer in time; rerun once it does (`dvc remote modify {name} "
            "timeout 60` waits longer)",
        ),
    ):
        if any(cause in text for cause in causes):
            return hint
    return text[:300]


def _keyscan_args(host: str) -> str:
    """`-p PORT HOST` for ssh-keyscan, from HOST[:PORT]."""
    hostname, _, port = host.partition(":")
    return f"-p {port} {hostname}" if port else hostname
