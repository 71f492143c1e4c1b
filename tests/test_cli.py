"""The ``aiocinder`` command: the demo (the README's main job) and ``list``."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

GiB = 1 << 30


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-m", "aiocinder.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_demo_creates_what_it_reports_and_keeps_it(tmp_path: Path) -> None:
    first = run("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    demo = tmp_path / "aiocinder-demo"
    assert "3 volumes, 1 snapshots, 1 connections" in first.stdout
    assert f"metadata: {demo / 'aiocinder.sqlite'}" in first.stdout
    files = sorted((demo / "volumes").iterdir())
    assert [f.name.split("-")[0] for f in files].count("volume") == 3
    assert all(f.stat().st_size == 2 * GiB for f in files)
    assert all(f.stat().st_blocks * 512 < (1 << 20) for f in files), "sparse"

    with sqlite3.connect(demo / "aiocinder.sqlite") as db:
        statuses = sorted(s for (s,) in db.execute("SELECT status FROM volumes"))
    assert statuses == ["available", "available", "in-use"]

    second = run("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "6 volumes, 2 snapshots, 2 connections" in second.stdout, "nothing lost"

    listed = run("list", "--connection", f"sqlite:///{demo / 'aiocinder.sqlite'}",
                 cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().endswith("6 volumes, 2 snapshots, 2 connections")
    volume_lines = [ln for ln in listed.stdout.splitlines() if ln.startswith("volume ")]
    assert len(volume_lines) == 6
    assert all(re.search(r"backend=demo$", ln) for ln in volume_lines)


def test_demo_in_a_chosen_directory_and_errors(tmp_path: Path) -> None:
    result = run("demo", "--dir", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "aiocinder.sqlite").is_file()
    bad = run("list", "--connection", "mysql://nope", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.startswith("aiocinder: InvalidArgument:")
