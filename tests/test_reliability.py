"""Concurrent and interrupted runs lose nothing: one job per folder, Ctrl-C, damaged artifacts, and safety rules."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trtmix.cli import main

from .conftest import TINY_RECIPE as RECIPE

PACKAGE = Path(__file__).resolve().parents[1] / "trtmix"


def _args(tmp_path: Path, output: Path, *extra: str) -> list[str]:
    (tmp_path / "recipe.py").write_text(RECIPE)
    return ["compile", "trtmix.models.tiny:convnet", "--data", str(tmp_path / "recipe.py"), "--metric", "cosine",
            "--flavour", "ort-cpu", "--backend", "onnxruntime", "-o", str(output), *extra]  # fmt: skip


def _slow(tmp_path: Path, output: Path) -> list[str]:
    """A job that takes seconds: a bisection with many timed runs per probe.

    Without smoothing and bias correction the conv net's all-INT8 plan misses this budget, so the search bisects.
    """
    args = _args(tmp_path, output, "--max-drop", "0.001%", "--runs", "20000", "--timing-target", "0", "--no-smooth",
                 "--no-bias-correction")  # fmt: skip  (a probe of this 0.1 ms net then takes about a second)
    return [sys.executable, "-m", "trtmix.cli", "-q", *args]


def _default_sigint() -> None:
    """Run in the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, seconds: float = 240) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def _probes(journal: Path) -> int:
    try:
        return sqlite3.connect(journal).execute("SELECT COUNT(*) FROM probes").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_one_job_per_folder_the_second_fails_naming_the_first(tmp_path: Path) -> None:
    output = tmp_path / "out"
    first = subprocess.Popen(_slow(tmp_path, output), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = output / ".trtmix.lock"
    _wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid))
    assert first.poll() is None
    second = subprocess.run([sys.executable, "-m", "trtmix.cli", "-q", *_args(tmp_path, output, "--max-drop", "1%")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert first.poll() is None, "the first job must still be running when the second is refused"
    assert second.returncode == 2 and f"Another trtmix job (pid {first.pid}) is writing to" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ""
    with sqlite3.connect(output / "journal.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert json.loads((output / "report.json").read_text())["chosen"]


def test_a_killed_jobs_lock_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    output = tmp_path / "out"
    output.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from trtmix.job import lock; lock.acquire(Path(sys.argv[1])); time.sleep(600)",
                               str(output)])  # fmt: skip
    _wait_for(lambda: (output / ".trtmix.lock").is_file() and (output / ".trtmix.lock").read_text().strip() != "")
    assert main(["-q", *_args(tmp_path, output, "--max-drop", "1%")]) == 2
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    with caplog.at_level(logging.INFO, logger="trtmix.job.lock"):
        assert main(["-q", *_args(tmp_path, output, "--max-drop", "1%")]) == 0
    assert f"from a run that was killed (pid {holder.pid})" in caplog.text


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path: Path) -> None:
    output = tmp_path / "out"
    # a shell starts background jobs with SIGINT ignored, and Python keeps it so: give the job the default back
    process = subprocess.Popen(_slow(tmp_path, output), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)  # fmt: skip
    _wait_for(lambda: _probes(output / "journal.sqlite") >= 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err
    measured = _probes(output / "journal.sqlite")
    assert measured >= 2 and not (output / "report.json").exists()
    assert not (output / ".trtmix.lock").read_text().strip(), "the lock is released"
    rerun = subprocess.run(_slow(tmp_path, output), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((output / "report.json").read_text())["resumed_probes"] == measured


def test_a_damaged_artifact_is_rebuilt_not_timed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    output = tmp_path / "out"
    args = ["-q", *_args(tmp_path, output, "--max-drop", "0.001%", "--runs", "5")]
    assert main(args) == 0
    built = sorted((output / "artifacts").glob("*.onnxruntime.onnx"))
    assert built and all(Path(f"{p}.sha256").is_file() for p in built)
    for path in built:
        path.write_bytes(path.read_bytes()[:100])  # truncated, as a full disk or a killed copy leaves it
    with caplog.at_level(logging.WARNING, logger="trtmix.quant.builder"):
        assert main(args) == 0  # resumes every probe; the final re-timing and the outputs need the artifacts
    assert "does not match the hash recorded when it was built" in caplog.text
    report = json.loads((output / "report.json").read_text())
    assert report["builds"] == 0 and report["resumed_probes"] >= 2
    rebuilt = [path for path in built if path.stat().st_size > 100]
    assert rebuilt, "the artifacts the rerun used were rebuilt"
    for path in rebuilt:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == Path(f"{path}.sha256").read_text().strip()


def _calls(name: str, bare: bool = False) -> list[tuple[Path, ast.Call]]:
    """Every call of ``name`` (a function, or with ``bare`` False also ``x.name``) in trtmix's source."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id == name:
                    found.append((path, node))
                elif not bare and isinstance(func, ast.Attribute) and func.attr == name:
                    found.append((path, node))
    return found


def test_np_load_never_unpickles() -> None:
    calls = _calls("load")
    numpy_loads = [(p, c) for p, c in calls if isinstance(c.func, ast.Attribute)
                   and getattr(c.func.value, "id", "") == "np"]  # fmt: skip
    assert numpy_loads, "trtmix reads .npz files with np.load"
    for path, call in numpy_loads:
        flags = {k.arg: k.value for k in call.keywords}
        assert "allow_pickle" in flags and getattr(flags["allow_pickle"], "value", True) is False, path


def test_torch_load_only_loads_weights() -> None:
    for path, call in _calls("load"):
        if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "torch":
            flags = {k.arg: k.value for k in call.keywords}
            assert getattr(flags.get("weights_only"), "value", False) is True, path


def test_no_eval_or_exec_of_data() -> None:
    assert not _calls("eval", bare=True) and not _calls("exec", bare=True), "trtmix never evaluates text"
    # ast.literal_eval (dynamo's scope metadata in trtmix.export) parses literals only and never runs code
    # pickle can run code from a file: trtmix neither loads pickles nor lets numpy do it
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert "import pickle" not in source and "pickle.load" not in source, path


def test_user_code_runs_only_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe beside the model, or in the working folder, is never imported unless --data names it."""
    marker = tmp_path / "ran"
    trap = f"open({str(marker)!r}, 'w').write('imported')\ndef load_data():\n    yield from []\n"
    for name in ("recipe.py", "calib.py", "data.py", "load_data.py"):
        (tmp_path / name).write_text(trap)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "export", "trtmix.models.tiny:convnet", "-o", str(tmp_path / "m.onnx")]) == 0
    assert main(["-q", "units", str(tmp_path / "m.onnx")]) == 0
    assert main(["-q", "profile", str(tmp_path / "m.onnx"), "--runs", "2"]) == 0
    assert not marker.exists()
    assert main(["-q", "profile", str(tmp_path / "m.onnx"), "--runs", "2", "--data", "recipe.py"]) == 2  # no batches
    assert marker.read_text() == "imported"  # named on the command line: run, as the user asked
    assert os.environ.get("TRTMIX_CACHE")  # the private cache from conftest, not the user's


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_full_or_read_only_output_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: int
) -> None:
    """The disk fills (or the folder turns read-only) while the output is written: an error, nothing half-written.

    This process runs as root here, which ignores permissions, so the OS error is raised where the bytes go to disk.
    """
    assert main(["-q", "export", "trtmix.models.tiny:convnet", "-o", str(tmp_path / "m.onnx")]) == 0
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        real_fsync(fd)
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    out = tmp_path / "out" / "fp16.onnx"
    assert main(["build", str(tmp_path / "m.onnx"), "--plan", "fp16", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: {os.strerror(error)}" in err and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(".*.tmp")), "no partial file, no temporary left behind"
