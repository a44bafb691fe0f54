"""Ray's storage: files written whole on a local folder, and a sweep whose saved state cannot be
read refused by name before Tune would start a new, empty experiment in its place."""

import json
import os
import pickle
import signal
import subprocess
import sys

import pyarrow.fs
import pytest
import ray.cloudpickle
from conftest import write_tiny_spec

from boxinst.platform.cli import main
from boxinst.platform.spec import SpecError
from boxinst.platform.sweep import check_resumable
from boxinst.platform.training.storage import storage_filesystem, storage_uri


def test_a_file_is_replaced_only_when_its_writer_closes_it(tmp_path):
    """While a new version is written, readers find the previous one whole; on close the new
    one takes its place and no temporary file is left."""
    path = tmp_path / "experiment_state.json"
    path.write_text("previous")
    filesystem = storage_filesystem(tmp_path)
    with filesystem.open_output_stream(str(path)) as stream:
        stream.write(b'{"new": ')
        stream.flush()
        assert path.read_text() == "previous"
        stream.write(b"1}")
    assert json.loads(path.read_text()) == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment_state.json"]


WRITER = """
import sys
import pyarrow.fs
from boxinst.platform.training.storage import storage_filesystem

plain = sys.argv[3] == "plain"
filesystem = pyarrow.fs.LocalFileSystem() if plain else storage_filesystem(sys.argv[1])
stream = filesystem.open_output_stream(sys.argv[2])
stream.write(b"half of the new vers")
stream.flush()
print("writing", flush=True)
sys.stdin.read()  # until killed
"""


def killed_while_writing(path, filesystem: str) -> None:
    """A process that writes part of a new version of ``path`` and is killed (SIGKILL)."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path.parent), str(path), filesystem],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout.readline() == b"writing\n"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL


def test_a_writer_killed_in_the_middle_leaves_the_previous_version_whole(tmp_path):
    """SIGKILL of a process in the middle of a write (as when a sweep's driver is killed while
    Tune saves its state): the file keeps its previous content, where pyarrow's own local file
    system (Ray's default for a folder) leaves it truncated."""
    previous = ray.cloudpickle.dumps({"grid": [6, 100, 8]})
    path = tmp_path / "basic-variant-state.json"
    path.write_bytes(previous)
    killed_while_writing(path, "whole")
    assert ray.cloudpickle.loads(path.read_bytes()) == {"grid": [6, 100, 8]}
    (partial,) = tmp_path.glob(f".{path.name}.*.partial")  # what the killed writer left
    assert partial.read_bytes() == b"half of the new vers"

    plain = tmp_path / "plain" / "basic-variant-state.json"
    plain.parent.mkdir()
    plain.write_bytes(previous)
    killed_while_writing(plain, "plain")
    assert plain.read_bytes() in (b"", b"half of the new vers")  # what a resume cannot read


def test_rays_uploads_copy_folders_whole_through_it_and_it_travels_pickled(tmp_path):
    """Ray uploads a folder (a checkpoint, Tune's state) with ``pyarrow.fs.copy_files``, and
    ships the file system pickled to its Train controller and workers."""
    source = tmp_path / "checkpoint"
    (source / "evaluation").mkdir(parents=True)
    (source / "checkpoint.pt").write_bytes(bytes(range(256)) * 1000)
    (source / "evaluation" / "metrics.json").write_text('{"segm/AP": 21.5}')
    filesystem = pickle.loads(pickle.dumps(storage_filesystem(tmp_path)))
    target = tmp_path / "runs" / "checkpoint_000001"
    pyarrow.fs.copy_files(str(source), str(target), destination_filesystem=filesystem)
    assert (target / "checkpoint.pt").read_bytes() == bytes(range(256)) * 1000
    assert (target / "evaluation" / "metrics.json").read_text() == '{"segm/AP": 21.5}'
    assert not list(target.rglob("*.partial"))
    filesystem.copy_file(str(target / "checkpoint.pt"), str(tmp_path / "copy.pt"))
    assert (tmp_path / "copy.pt").read_bytes() == bytes(range(256)) * 1000


def test_a_uri_keeps_rays_own_file_system_and_a_folder_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_filesystem("s3://bucket/runs") is None
    assert storage_uri("s3://bucket/runs") == "s3://bucket/runs"
    assert storage_uri("runs") == str(tmp_path / "runs")


def saved_sweep(folder, experiment_state: bytes, searcher_state: bytes | None):
    """A sweep's folder with the state files Tune writes (an older, complete session's too)."""
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(ray.cloudpickle.dumps({"_is_restored": False}))
    (folder / "experiment_state-2026-12-05_10-00-00.json").write_text('{"trial_data": []}')
    (folder / "basic-variant-state-2026-12-05_10-00-00.json").write_bytes(
        ray.cloudpickle.dumps({"_finished": False})
    )
    (folder / "experiment_state-2026-12-05_11-00-00.json").write_bytes(experiment_state)
    if searcher_state is not None:
        (folder / "basic-variant-state-2026-12-05_11-00-00.json").write_bytes(searcher_state)
    return folder


def test_a_sweep_whose_newest_saved_state_reads_is_resumable(tmp_path):
    saved_sweep(
        tmp_path / "sweep", b'{"trial_data": [], "runner_data": {}}', ray.cloudpickle.dumps({})
    )
    check_resumable(tmp_path, "sweep")  # raises nothing


SEARCHER = ray.cloudpickle.dumps({"_finished": True})


@pytest.mark.parametrize(
    ("experiment_state", "searcher_state", "named"),
    [
        (b'{"trial_data": [', SEARCHER, "experiment_state-2026-12-05_11"),
        (b'{"trial_data": []}', b"", "basic-variant-state-2026-12-05_11"),
        (b'{"trial_data": []}', SEARCHER[:-4], "basic-variant-state-2026-12-05_11"),
    ],
    ids=["truncated-trials", "empty-searcher", "truncated-searcher"],
)
def test_a_sweep_whose_newest_saved_state_is_truncated_is_refused_by_its_file(
    tmp_path, experiment_state, searcher_state, named
):
    """The newest state is what Tune restores (not the older, complete one): unreadable, the
    resume is refused with the file's path, not left to Tune's silent restart."""
    folder = saved_sweep(tmp_path / "sweep", experiment_state, searcher_state)
    with pytest.raises(SpecError, match=f"{folder}/{named}.*cannot be resumed"):
        check_resumable(tmp_path, "sweep")


def test_a_sweep_without_its_searchers_state_is_refused(tmp_path):
    folder = saved_sweep(tmp_path / "sweep", b'{"trial_data": []}', None)
    (folder / "basic-variant-state-2026-12-05_10-00-00.json").unlink()
    with pytest.raises(SpecError, match=r"no basic-variant-state-\*\.json"):
        check_resumable(tmp_path, "sweep")


def test_resuming_a_sweep_that_cannot_be_read_fails_by_name_before_mlflow_or_ray(tmp_path, capsys):
    """``boxinst sweep --resume``: the unreadable state is named, exit 2, before the tracking
    server is reached (nothing listens at its address: reaching it would fail on that) and so
    before Ray starts; so is a name that is no sweep of the storage."""
    spec = write_tiny_spec(tmp_path)
    storage = tmp_path / "runs"
    saved_sweep(storage / "tiny-20261205-110000", b'{"trial_data": [', SEARCHER)
    options = ["--storage", str(storage), "--tracking-uri", "http://127.0.0.1:9"]
    assert main(["sweep", str(spec), "--resume", *options]) == 2
    error = capsys.readouterr().err
    assert "tiny-20261205-110000/experiment_state-2026-12-05_11-00-00.json" in error
    assert "cannot be resumed" in error
    assert main(["sweep", str(spec), "--resume", "tiny-elsewhere", *options]) == 2
    assert f"no sweep tiny-elsewhere to resume under {storage}" in capsys.readouterr().err
