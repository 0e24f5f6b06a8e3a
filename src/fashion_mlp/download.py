"""Stage `download`: the four canonical Fashion-MNIST files into `data/raw/`, checksum-verified.

Reads params `data` (local_dir, urls, md5). Writes the four gzip files under their canonical
names. Sources are tried in order: the local directory (Debian's `dataset-fashion-mnist` package
puts the files in /usr/share/datasets/fashion-mnist), then each base URL. A file is accepted only
if the MD5 of its *decompressed* content matches: mirrors re-compress, so gzip bytes differ while
the content is identical. Files are fetched into a staging folder and moved into place only when
all four are verified, so a failure leaves `data/raw/` as it was.

    fashion-mlp download --out-dir data/raw
"""

import gzip
import hashlib
import shutil
import urllib.request
import zlib
from pathlib import Path

from fashion_mlp.atomic import atomic_paths
from fashion_mlp.dataset import RAW_FILES
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import DataParams

URL_TIMEOUT_SECONDS = 30
FIX_HINT = (
    "install the files with `apt-get install dataset-fashion-mnist`, or set data.local_dir in "
    "params.yaml to a folder holding them"
)


class RejectedFile(Exception):
    """A fetched file that is not the expected content (not gzip, truncated, wrong checksum)."""


def decompressed_md5(path: Path) -> str:
    """MD5 of a gzip file's decompressed content; RejectedFile if it is not valid gzip."""
    digest = hashlib.md5()
    try:
        with gzip.open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise RejectedFile(f"not a complete gzip file ({err})") from None
    return digest.hexdigest()


def verify(path: Path, expected_md5: str) -> None:
    actual = decompressed_md5(path)
    if actual != expected_md5:
        raise RejectedFile(f"decompressed MD5 is {actual}")


def candidate_sources(params: DataParams, file_name: str) -> list[str]:
    """Where `file_name` may be found, in the order they are tried."""
    local = str(Path(params.local_dir) / file_name)
    return [local] + [base.rstrip("/") + "/" + file_name for base in params.urls]


def fetch(source: str, destination: Path) -> None:
    """Copy a local path or an http(s) URL to `destination`."""
    if source.startswith(("http://", "https://")):
        with (
            urllib.request.urlopen(source, timeout=URL_TIMEOUT_SECONDS) as response,
            destination.open("wb") as out,
        ):
            shutil.copyfileobj(response, out)
    else:
        shutil.copyfile(source, destination)


def download(params: DataParams, out_dir: Path) -> dict[str, str]:
    """Fetch and verify the four files into `out_dir`; return file name -> source used."""
    out_dir = Path(out_dir)
    used: dict[str, str] = {}
    targets = [out_dir / file_name for file_name in RAW_FILES.values()]
    with atomic_paths(*targets) as staged_files:
        for (role, file_name), staged in zip(RAW_FILES.items(), staged_files, strict=True):
            used[file_name] = _fetch_verified(
                params, file_name, getattr(params.md5, role), staged, f"data.md5.{role}"
            )
    return used


def _fetch_verified(
    params: DataParams, file_name: str, expected_md5: str, staged: Path, md5_key: str
) -> str:
    failures = []
    for source in candidate_sources(params, file_name):
        try:
            fetch(source, staged)
            verify(staged, expected_md5)
            return source
        except RejectedFile as err:
            failures.append(
                f"{source}: rejected, {err}; expected decompressed MD5 {expected_md5} ({md5_key})"
            )
        except OSError as err:  # missing file, refused connection, timeout, HTTP error
            failures.append(f"{source}: {getattr(err, 'strerror', None) or err}")
        staged.unlink(missing_ok=True)
    raise PipelineError(f"no source gave {file_name}: {'; '.join(failures)}. Fix: {FIX_HINT}")
