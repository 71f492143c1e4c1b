"""aiocinder's benchmarks: ``python -m benchmarks`` (or ``nox -s bench``)."""
