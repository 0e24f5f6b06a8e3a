"""A real SSH server for the DVC remote tests: Debian's sshd on a loopback port with a throwaway
host key, and a remote set up by deploy/dvc-remote.sh itself (an account that logs in by key
only, a folder of its own, a member's throwaway key authorized)."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers.data import PROJECT_ROOT
from helpers.markers import require
from helpers.process import free_port

SSHD = shutil.which("sshd", path=os.environ["PATH"] + os.pathsep + "/usr/sbin")
ACCOUNT = "fashion-mlp-dvc"  # the remote's account, as an admin would create it


@dataclass
class SshRemote:
    url: str  # ssh://ACCOUNT@127.0.0.1:PORT/FOLDER
    storage: Path  # the remote's folder, as the server sees it
    keyfile: Path  # the member's private key
    home: Path  # a HOME whose ~/.ssh/known_hosts vouches for the server's host key
    config: Path  # sshd's configuration
    port: int
    process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """What a member's commands run with: this HOME (its known_hosts)."""
        return {"HOME": str(self.home)}

    def start(self) -> None:
        """Start sshd (again: same port, host key and folder) and wait until it answers."""
        log = self.config.with_name("sshd.log")
        with log.open("a") as stream:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdout=stream, stderr=stream
            )
        deadline = time.monotonic() + 30
        while not _answers(self.port):
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "sshd did not start in 30 s"
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGKILL sshd and every session it started: the host going away."""
        subprocess.run(["pkill", "-KILL", "-f", f"sshd.*{self.config}"], check=False)
        if self.process is not None:
            self.process.wait()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            return connection.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def key_pair(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@contextmanager
def ssh_remote(folder: Path, storage: Path | None = None) -> Iterator[SshRemote]:
    """sshd on 127.0.0.1 and a DVC remote in `storage` (default: a new folder under /tmp that
    the remote's account can reach), set up with deploy/dvc-remote.sh."""
    require(SSHD is not None, "openssh-server is not installed (apt-get install openssh-server)")
    require(os.geteuid() == 0, "sshd and deploy/dvc-remote.sh need root")
    folder.mkdir(parents=True, exist_ok=True)
    if storage is None:
        parent = Path(tempfile.mkdtemp(prefix="fashion-mlp-remote-"))
        parent.chmod(0o755)  # pytest's own tmp folders are root's only
        storage = parent / "dvc"
    keys = folder / "keys"
    keys.mkdir()
    host_key, member_key = key_pair(keys / "host"), key_pair(keys / "member")
    subprocess.run(
        [
            "sh",
            str(PROJECT_ROOT / "deploy/dvc-remote.sh"),
            str(storage),
            ACCOUNT,
            f"{member_key}.pub",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {folder / 'sshd.pid'}\n"
        "PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True)
    algorithm, key = (keys / "host.pub").read_text().split()[:2]
    (home / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{port} {algorithm} {key}\n")
    remote = SshRemote(
        f"ssh://{ACCOUNT}@127.0.0.1:{port}{storage}", storage, member_key, home, config, port
    )
    remote.start()
    try:
        yield remote
    finally:
        remote.stop()
        shutil.rmtree(storage, ignore_errors=True)
