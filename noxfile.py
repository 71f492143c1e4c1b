"""Developer sessions: ``nox -s tests lint typecheck docs bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (PostgreSQL tests start their own server, or use
    ``AIOCINDER_TEST_PG_DSN``)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks and this file."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", "aiocinder", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[typecheck]")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML docs into docs/_build/html (warnings are errors)."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmarks: figures printed as ratios against a baseline of the same run.

    Without arguments: everything, at N = 1,000 and 10,000 for the scans on
    SQLite and PostgreSQL (a throwaway server unless AIOCINDER_BENCH_PG_DSN), the
    JSON in benchmarks/results/ and the chart in docs/_static/benchmarks.png.
    Otherwise the arguments go to ``python -m benchmarks`` (``-- --help``).
    cinderlib 5.2 gets a venv of its own, built once in .bench-venvs/cinderlib.
    """
    session.install("-e", ".[bench]")
    args = session.posargs or [
        "--sizes", "1000", "10000",
        "--stores", "sqlite", "postgresql",
        "--json", "benchmarks/results/results.json",
        "--chart", "docs/_static/benchmarks.png",
    ]
    session.run("python", "-m", "benchmarks", *args)
