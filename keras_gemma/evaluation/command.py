"""``keras-gemma eval``: runs one task on one model and prints a results table.

``keras_gemma/cli.py`` only declares the arguments and calls ``run``.
"""

import json
import os
import sys
import time


def run(args, load_model):
    """Evaluates ``args.task``; ``load_model(args)`` builds the model."""
    task = args.task
    if not task.startswith("lm-eval:") and task != "humaneval" and not os.path.isfile(
        os.path.expanduser(task)
    ):
        raise ValueError(
            f"--task {task}: expected 'humaneval', 'lm-eval:<task name>' or a task "
            "file (.json or .yaml); no such file."
        )
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be 0 or more, got {args.num_fewshot}.")
    start = time.monotonic()
    model = load_model(args)
    load_seconds = time.monotonic() - start
    if task == "humaneval":
        results = _humaneval(model, args)
    elif task.startswith("lm-eval:"):
        results = _lm_eval(model, args, task[len("lm-eval:"):])
    else:
        results = _task_file(model, args, os.path.expanduser(task))
    results["config"] = {
        "preset": args.preset, "backend": os.environ.get("KERAS_BACKEND"),
        "task": task, "limit": args.limit, "num_fewshot": args.num_fewshot,
        "batch_size": args.batch_size, "quantize": args.quantize, "dtype": args.dtype,
        "adapter": args.adapter, "load_seconds": round(load_seconds, 1),
        "total_seconds": round(time.monotonic() - start, 1),
        "command": "keras-gemma " + " ".join(sys.argv[1:]),
    }
    print(format_table(results["metrics"], results["config"]))
    if args.out:
        _write_json(os.path.expanduser(args.out), results)
        partial = os.path.expanduser(args.out) + ".partial"
        if os.path.exists(partial):
            os.remove(partial)
    return 0


def _humaneval(model, args):
    from keras_gemma.evaluation import humaneval

    if args.num_fewshot:
        raise ValueError("HumanEval is zero-shot: leave out --num-fewshot.")
    def save_partial(details, seconds):
        # A long run leaves its state beside --out as it goes.
        if args.out:
            _write_json(os.path.expanduser(args.out) + ".partial", {
                "problems_done": len(details), "passed": sum(d["passed"] for d in details),
                "seconds": round(seconds, 1), "details": details})

    result = humaneval.evaluate(
        model, limit=args.limit, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens or humaneval.MAX_NEW_TOKENS,
        on_progress=save_partial,
    )
    metrics = {"humaneval": {"pass@1": result["pass@1"], "problems": result["problems"],
                             "seconds": round(result["seconds"], 1)}}
    return {"metrics": metrics, "details": result["details"],
            "max_new_tokens": result["max_new_tokens"]}


def _task_file(model, args, path):
    from keras_gemma.evaluation import tasks

    task = tasks.load_task(path)
    result = tasks.evaluate_task(
        model, task, limit=args.limit, num_fewshot=args.num_fewshot,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
    )
    return {"metrics": {task.name: result["metrics"]}, "details": result["details"]}


def _lm_eval(model, args, names):
    from keras_gemma.evaluation import lm_eval_adapter

    lm = lm_eval_adapter.LMEvalModel(model=model, batch_size=args.batch_size)
    output = lm_eval_adapter.simple_evaluate(
        lm, names.split(","), limit=args.limit, num_fewshot=args.num_fewshot,
    )
    metrics = {}
    for name, values in output["results"].items():
        metrics[name] = {k.split(",")[0]: v for k, v in values.items()
                         if isinstance(v, (int, float)) and "stderr" not in k}
    return {"metrics": metrics}


def format_table(metrics, config):
    """Task | metric | value rows, as plain text (also fine in a log)."""
    rows = [(task, name, value) for task, values in metrics.items()
            for name, value in values.items()]
    widths = [max([len("task")] + [len(r[0]) for r in rows]),
              max([len("metric")] + [len(r[1]) for r in rows])]
    lines = [f"{'task':<{widths[0]}}  {'metric':<{widths[1]}}  value",
             f"{'-' * widths[0]}  {'-' * widths[1]}  -----"]
    for task, name, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{task:<{widths[0]}}  {name:<{widths[1]}}  {shown}")
    setting = (f"{config['preset']} on {config['backend']}"
               + (f", {config['quantize']}" if config["quantize"] else "")
               + (f", adapter {config['adapter']}" if config["adapter"] else "")
               + f"; {config['total_seconds']} s")
    return "\n".join(lines + [setting])


def _write_json(path, content):
    """Atomic: a reader never sees half a results file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    staging = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(staging, "w") as f:
        json.dump(content, f, indent=1)
    os.replace(staging, path)
