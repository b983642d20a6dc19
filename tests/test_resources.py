"""Running out of memory or disk is reported as such: which step, what it asked for, and that the job resumes."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from trtmix.errors import ResourceError, TrtmixError
from trtmix.job.steps import step


def test_an_allocation_the_machine_cannot_make_names_the_step_and_the_size(tmp_path: Path) -> None:
    with pytest.raises(ResourceError) as caught, step("calibration", tmp_path):
        np.empty(2**50, dtype=np.float64)  # 8 PiB: numpy refuses it with a MemoryError that says how much
    message = str(caught.value)
    assert message.startswith("Out of memory during calibration: Unable to allocate 8.00 PiB")
    assert "journal.sqlite" in message and "rerun the same command" in message


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_names_the_step_and_the_free_space(tmp_path: Path) -> None:
    with pytest.raises(ResourceError) as caught, step("writing the report", tmp_path):
        with open("/dev/full", "wb") as full:  # every write to /dev/full fails with ENOSPC, a real full disk
            full.write(b"x" * 4096)
            full.flush()
    message = str(caught.value)
    assert message.startswith("Out of disk space during writing the report") and "MiB free in" in message
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.ENOSPC


def test_other_errors_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(TrtmixError, match="^bad plan$"), step("the search", tmp_path):
        raise TrtmixError("bad plan")
    with pytest.raises(FileNotFoundError), step("the search", tmp_path):
        open(tmp_path / "missing.json").close()
