"""The code's own checks, part of the test command so they run wherever the
tests do: ruff's lint and format, and mypy strict on the package installed
as users install it (the source tree maps ``workers/`` and ``storage/`` to
``jobsd.workers`` and ``jobsd.storage``, a layout mypy cannot read as is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CODE = ["jobsd", "workers", "storage", "tests", "benchmarks", "examples"]


def run(*argv: str, cwd: Path = REPO, timeout: float = 300) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_ruff_finds_nothing_to_lint_or_format() -> None:
    run(sys.executable, "-m", "ruff", "check", *CODE)
    run(sys.executable, "-m", "ruff", "format", "--check", *CODE)


def test_mypy_strict_passes_on_the_installed_package(tmp_path: Path) -> None:
    target = tmp_path / "site"
    run(
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), "."
    )
    assert (target / "jobsd" / "py.typed").exists()
    out = run(
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(REPO / "pyproject.toml"),
        "-p",
        "jobsd",
        cwd=target,
    )
    assert "Success" in out
