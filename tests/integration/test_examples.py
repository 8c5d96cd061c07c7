"""The example activities and the development configuration that scripts/run.sh and scripts/demo.py use."""

from __future__ import annotations

from helpers import REPO, activity_spec, check_config

DEV_CONF = REPO / "etc" / "tprefork-dev.conf"
EXAMPLES = REPO / "examples" / "exec"


def test_dev_config_is_valid():
    # Its paths are relative to the repository's root, where scripts/run.sh starts tprefork.
    rc, err, out = check_config(DEV_CONF, cwd=REPO)
    assert rc == 0, f"tprefork -t -c etc/tprefork-dev.conf: status {rc}\n{err}{out}"


def test_sample_config_is_valid():
    """etc/tprefork.conf.sample, which make install ships, passes -t."""
    rc, err, out = check_config(REPO / "etc" / "tprefork.conf.sample", cwd=REPO)
    assert rc == 0, f"tprefork -t -c etc/tprefork.conf.sample: status {rc}\n{err}{out}"


def test_example_activities(server, tprefork):
    tp = tprefork({"activities": [
        {"type": "Echo", "exec": [str(EXAMPLES / "echo.sh")]},
        {"type": "Sum", "exec": [str(EXAMPLES / "sum.py")]},
        {"type": "Upper", "exec": [str(EXAMPLES / "upper.sh")], "non_retryable_exit_codes": [2]},
    ]}, wait_ready=True)
    q = tp.task_queue
    out = server.run_workflow([
        activity_spec("Echo", ["hi", "ignored"], q),
        activity_spec("Sum", [1, 2, [3, 4.5]], q),
        activity_spec("Upper", ["héllo"], q),
        activity_spec("Upper", [5], q, max_attempts=0),
        activity_spec("Sum", ["x"], q, max_attempts=0),
    ])
    assert out[0] == {"ok": "hi"}
    assert out[1] == {"ok": 10.5}
    assert out[2] == {"ok": "HÉLLO"}
    for bad in out[3:]:
        assert "error" in bad, bad
        assert bad["error"]["cause_type"] == "BadInput", bad
        assert bad["error"]["non_retryable"] is True, bad
