"""The test runner's scheduling (testbed/tests.py), against the project's own rules."""

import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runner  # noqa: E402

CONFIG = tomllib.loads((Path(__file__).resolve().parent / "tests.toml").read_text())
RULES = CONFIG["rule"]
LIMITS = CONFIG["groups"]


def job(binary, test="t"):
    return runner.classify(binary, test, RULES)


def test_the_projects_rules_classify_as_documented():
    assert job("apiserver_restart").alone and job("apiserver_restart").priority == 100
    assert job("node_defaults").alone
    assert not job("node_defaults_x").alone
    assert job("binary", "a_busy_namespace_leaves_the_others_their_share").alone
    assert not job("binary", "a_hostile_tenant_costs_the_shared_controller_bounded_memory").alone
    assert job("node_webhook_gitops").priority == 90
    assert job("controller", "alerts::recorded_series").priority == 90
    assert job("controller", "basic::x").priority == 0
    assert job("chart", "a_second_release_installs_beside").groups == ("cluster-scoped",)
    assert job("chart", "namespace_users_manage_resources").groups == ("cluster-scoped",)
    assert job("chart", "renders").groups == ()
    assert job("node_chart").groups == ("cluster-scoped",)


def test_the_queue_puts_priority_first_then_names():
    jobs = [job("b"), job("node_workloads"), job("a"), job("apiserver_restart")]
    assert [j.binary for j in runner.order(jobs)] == [
        "apiserver_restart",
        "node_workloads",
        "a",
        "b",
    ]


def test_a_job_that_runs_alone_waits_for_the_others_and_holds_the_queue():
    alone, a, b = job("apiserver_restart"), job("a"), job("b")
    assert runner.next_startable([alone, b], [a], 8, LIMITS) is None
    assert runner.next_startable([alone, b], [], 8, LIMITS) == alone
    assert runner.next_startable([b], [alone], 8, LIMITS) is None


def test_a_full_group_is_passed_over_not_waited_for():
    c1, c2, a = job("node_chart", "x"), job("node_chart", "y"), job("a")
    assert runner.next_startable([c2, a], [c1], 8, LIMITS) == a
    assert runner.next_startable([c2], [c1], 8, LIMITS) is None
    assert runner.next_startable([c2], [a], 8, LIMITS) == c2


def test_no_more_than_the_threads():
    running = [job(f"r{i}") for i in range(8)]
    assert runner.next_startable([job("a")], running, 8, LIMITS) is None
    assert runner.next_startable([job("a")], running[:7], 8, LIMITS) == job("a")


def test_the_make_run_check_runs_beside_the_tests_after_those_that_run_alone():
    extra = [runner.Job(runner.EXTRA, e["name"], e["priority"]) for e in CONFIG["extra"]]
    assert [e.test for e in extra] == ["make run, checked"]
    queue = runner.order([job("a"), job("apiserver_restart"), *extra, job("node_workloads")])
    assert [j.binary for j in queue] == ["apiserver_restart", "extra", "node_workloads", "a"]
