"""Fixtures of the integration tests.

server          session: a Temporal dev server with the poll-cancel-on-shutdown capability enabled
                (frontend.enableCancelWorkerPollsOnShutdown=true), a client and the RunActivities worker.
server_legacy   session, started only when a test asks: the same without that capability.
dev_server      function: a factory start(capability=True, db_file=None, port=None) for tests that
                stop and restart their own server; stopped at teardown.
tprefork        function: a factory tp = tprefork(config_dict_or_text, args=[...], env={...}); at teardown
                every tprefork still running gets SIGTERM (SIGKILL of its session after 15 s), and the
                test fails if a process of its session is left or its log has a sanitizer report.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from helpers import AsyncRunner, DevServer, TemporalEnv, TprefFactory, start_dev_server, tail

PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config: pytest.Config) -> None:
    # Orphaned grandchildren (an activity's leftovers) are reparented to this process, so the harness
    # can see and reap them instead of leaving zombies to an init that may not reap.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session")
def runner():
    r = AsyncRunner()
    yield r
    r.close()


def _env(runner: AsyncRunner, workdir: Path, capability: bool, name: str):
    srv = DevServer(workdir, capability=capability, name=name).start()
    try:
        env = TemporalEnv(srv, runner)
    except BaseException:
        srv.stop()
        raise
    return env


@pytest.fixture(scope="session")
def server(runner, tmp_path_factory):
    env = _env(runner, tmp_path_factory.mktemp("server"), True, "temporal")
    yield env
    env.close()


@pytest.fixture(scope="session")
def server_legacy(runner, tmp_path_factory):
    env = _env(runner, tmp_path_factory.mktemp("server-legacy"), False, "temporal-legacy")
    yield env
    env.close()


@pytest.fixture
def dev_server(tmp_path):
    started: list[DevServer] = []

    def start(capability: bool = True, db_file=None, port=None) -> DevServer:
        d = tmp_path / f"dev-server-{len(started) + 1}"
        srv = start_dev_server(d, capability=capability, db_file=db_file, port=port)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def tprefork(request, tmp_path):
    factory = TprefFactory(tmp_path, request.node.name, lambda: request.getfixturevalue("server"))
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    funcargs = getattr(item, "funcargs", {}) or {}
    factory = funcargs.get("tprefork")
    if isinstance(factory, TprefFactory):
        for tp in factory.handles:
            rep.sections.append((f"tprefork log ({tp.log_path})", tail(tp.log(), 200)))
    for name in ("server", "server_legacy"):
        env = funcargs.get(name)
        if isinstance(env, TemporalEnv):
            rep.sections.append((f"dev server log ({env.server.log_path}), last lines",
                                 tail(env.server.log(), 30)))
