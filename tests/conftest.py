"""Test hygiene shared by serial and `mpirun -n 2` runs (as DOLFINx's conftest).

* ``tempdir``: a directory made on rank 0 and broadcast, so all ranks write to
  the same place.
* a barrier in teardown, so no rank races ahead into the next test.
* ``skip_in_parallel``: marker for tests that only make sense on one rank.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import tempfile

import pytest

try:  # the PyPI DOLFINx wheel must be imported before dolfinx/petsc4py
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _comm():
    try:
        import dolfinx_solver  # noqa: F401  (must precede petsc4py/dolfinx)
    except ImportError:
        pass
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.hookimpl(trylast=True)  # after the terminal plugin has made its reporter
def pytest_configure(config):
    config.addinivalue_line("markers", "skip_in_parallel: skip this test when run on more than one rank")
    # under mpirun only rank 0 reports, so the run ends in one pytest summary line;
    # a failure on another rank still fails the job through its exit status
    if _comm().rank > 0:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)


def pytest_runtest_setup(item):
    if item.get_closest_marker("skip_in_parallel") and _comm().size > 1:
        pytest.skip("serial only")


@pytest.fixture(autouse=True)
def _barrier_teardown():
    yield
    _comm().Barrier()


@pytest.fixture
def tempdir(request):
    """A fresh directory shared by all ranks (made on rank 0, path broadcast)."""
    comm = _comm()
    path = None
    if comm.rank == 0:
        path = tempfile.mkdtemp(prefix=f"slipstream-{request.node.name[:40]}-")
    path = comm.bcast(path, root=0)
    yield pathlib.Path(path)
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_cli():
    """Run ``slipstream ...`` in a subprocess of this interpreter; returns CompletedProcess."""

    from clitools import cli_command

    def run(*args, cwd=None, timeout=600, ranks=1):
        cmd, env = cli_command(*args, ranks=ranks)
        return subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    return run
