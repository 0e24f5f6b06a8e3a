"""download: local directory first, then URLs; MD5 of decompressed content; all or nothing."""

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from fashion_mlp.dataset import RAW_FILES
from fashion_mlp.download import decompressed_md5, download
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import DataParams
from helpers.data import write_params


def data_params(local_dir: Path, checksums: dict, urls: tuple[str, ...] = ()) -> DataParams:
    return DataParams(local_dir=str(local_dir), urls=list(urls), md5=checksums)


@pytest.fixture
def http_mirror(tmp_path: Path):
    """A real HTTP server on 127.0.0.1 serving a folder; yields (folder, base URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_local_copy_is_verified_and_placed(tmp_path, synthetic_raw):
    source, checksums = synthetic_raw
    used = download(data_params(source, checksums), tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(RAW_FILES.values())
    for role, name in RAW_FILES.items():
        assert decompressed_md5(tmp_path / "raw" / name) == checksums[role]
        assert used[name] == str(source / name)


def test_recompressed_copy_is_accepted(tmp_path, synthetic_raw):
    """Mirrors re-compress: different gzip bytes, same content, must pass."""
    source, checksums = synthetic_raw
    name = RAW_FILES["train_labels"]
    content = gzip.decompress((source / name).read_bytes())
    (source / name).write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    download(data_params(source, checksums), tmp_path / "raw")
    assert gzip.decompress((tmp_path / "raw" / name).read_bytes()) == content


def test_falls_back_to_a_url_when_the_local_dir_lacks_files(tmp_path, synthetic_raw, http_mirror):
    source, checksums = synthetic_raw
    mirror, base_url = http_mirror
    for name in RAW_FILES.values():
        shutil.copy(source / name, mirror / name)
    used = download(data_params(tmp_path / "nowhere", checksums, (base_url,)), tmp_path / "raw")
    assert set(used.values()) == {base_url + name for name in RAW_FILES.values()}
    assert decompressed_md5(tmp_path / "raw" / RAW_FILES["test_images"]) == checksums["test_images"]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda data: data[: len(data) // 2], "not a complete gzip file"),
        (lambda data: b"<html>not found</html>", "not a complete gzip file"),
        (lambda data: gzip.compress(gzip.decompress(data)[:-1] + b"\x07"), "decompressed MD5 is"),
    ],
    ids=["truncated", "not-gzip", "wrong-checksum"],
)
def test_bad_file_is_refused_naming_it_and_nothing_is_left(
    tmp_path, synthetic_raw, corrupt, reason
):
    source, checksums = synthetic_raw
    name = RAW_FILES["test_images"]
    (source / name).write_bytes(corrupt((source / name).read_bytes()))
    out = tmp_path / "raw"
    with pytest.raises(PipelineError) as caught:
        download(data_params(source, checksums), out)
    message = str(caught.value)
    assert f"{source / name}: rejected, {reason}" in message
    expected = checksums["test_images"]
    assert f"; expected decompressed MD5 {expected} (data.md5.test_images)" in message
    assert not out.exists()  # not even the folder: nothing is left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")] == []


def test_no_source_lists_every_attempt_and_the_fix(tmp_path, synthetic_raw):
    _, checksums = synthetic_raw
    unreachable = "http://127.0.0.1:9/"  # the discard port: connection refused
    with pytest.raises(PipelineError) as caught:
        download(data_params(tmp_path / "nowhere", checksums, (unreachable,)), tmp_path / "raw")
    message = str(caught.value)
    first = RAW_FILES["train_images"]
    assert f"{tmp_path / 'nowhere' / first}: No such file or directory" in message
    assert f"{unreachable}{first}: " in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.local_dir" in message


def test_cli_download(workdir, params):
    from typer.testing import CliRunner

    from fashion_mlp.cli import app
    from helpers.data import declared_params

    write_params(workdir / "params.yaml", declared_params(params, "download"))
    result = CliRunner().invoke(app, ["download", "--out-dir", "data/raw"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (workdir / "data/raw").iterdir()) == sorted(RAW_FILES.values())
