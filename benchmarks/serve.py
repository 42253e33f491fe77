"""Serving benchmark: ``keras-gemma serve`` under N concurrent clients against
the same requests answered one by one with ``GemmaCausalLM.generate``.

1. Starts ``keras-gemma serve`` (a subprocess, localhost, ``--max-batch``
   slots) and sends N greedy requests at once from N client threads with
   the official ``openai`` package (streamed, so the first token's arrival is
   seen): mixed prompt lengths (about 10 to 60 tokens) and output lengths
   (16 to 64 tokens). Measures aggregate tokens/s (all completion tokens /
   wall time from the first request sent to the last answer), time to first
   token (p50, p95) and per-request decode tokens/s.
2. Stops the server, loads the same model in this process and answers the
   same requests one after another with ``generate`` (after one untimed call
   per compiled shape, as the server also compiles before it serves). Its
   time to first token is what a client of such a loop would see with all N
   arriving at once: the time until its turn plus its own first token
   (timed with a one-token ``generate``).

Both sides decode the same greedy tokens (the server's greedy output equals
``generate``'s), so the work is the same; the script reports how many answers
matched exactly. Results are printed and written as JSON.

    .venv/bin/python benchmarks/serve.py                      # 32 clients, 16 slots
    .venv/bin/python benchmarks/serve.py --clients 8 --max-batch 4 --skip-one-by-one
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from generate import PROMPTS  # noqa: E402  (the generation benchmark's prompts)

OUTPUT_LENGTHS = (16, 64, 32, 48, 24, 56, 40)


def requests(count):
    """(prompt, max_tokens) pairs: 1 to 4 sentences, mixed output lengths."""
    jobs = []
    for i in range(count):
        sentences = [PROMPTS[(i + j) % len(PROMPTS)] for j in range(1 + i % 4)]
        jobs.append((" ".join(sentences), OUTPUT_LENGTHS[i % len(OUTPUT_LENGTHS)]))
    return jobs


def percentile(values, q):
    return float(np.percentile(values, q)) if values else None


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


# -- 1. the server --------------------------------------------------------------------


def start_server(args):
    command = [str(Path(sys.executable).parent / "keras-gemma"), "serve", "--preset",
               args.preset, "--port", "0", "--max-batch", str(args.max_batch),
               "--max-queue", str(args.clients), "--context-length", str(args.context_length),
               "--model-name", "bench", "--backend", args.backend]
    if args.dtype:
        command += ["--dtype", args.dtype]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env=environment)
    lines, ready = [], threading.Event()
    port = {}

    def read():
        for line in process.stderr:
            lines.append(line.rstrip())
            match = re.search(r"serving \S+ on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port["value"] = int(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(args.timeout) or "value" not in port:
        process.kill()
        raise SystemExit("the server did not start:\n" + "\n".join(lines[-20:]))
    return process, port["value"], lines


def run_clients(port, jobs, timeout):
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                           max_retries=0, timeout=timeout)
    client.completions.create(model="bench", prompt="Warm up", max_tokens=4, temperature=0)
    results = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def ask(index):
        prompt, max_tokens = jobs[index]
        barrier.wait()
        sent = time.perf_counter()
        first, pieces, usage = None, [], None
        for chunk in client.completions.create(
                model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0,
                stream=True, stream_options={"include_usage": True}):
            if chunk.choices:
                if first is None:
                    first = time.perf_counter()
                pieces.append(chunk.choices[0].text)
            if chunk.usage is not None:
                usage = chunk.usage
        results[index] = {"sent": sent, "first": first, "end": time.perf_counter(),
                          "text": "".join(pieces), "tokens": usage.completion_tokens}

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if any(r is None for r in results):
        raise SystemExit("some clients got no answer in time")
    return results


def summarize(results):
    start = min(r["sent"] for r in results)
    wall = max(r["end"] for r in results) - start
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["first"] - r["sent"] for r in results]
    decode = [(r["tokens"] - 1) / (r["end"] - r["first"])
              for r in results if r["tokens"] > 1 and r["end"] > r["first"]]
    return {
        "requests": len(results), "completion_tokens": tokens, "wall_s": round(wall, 2),
        "aggregate_tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(percentile(ttft, 50), 3), "ttft_p95_s": round(percentile(ttft, 95), 3),
        "per_request_decode_tokens_per_s_p50": round(percentile(decode, 50), 2),
    }


# -- 2. one by one ----------------------------------------------------------------------


def one_by_one(args, jobs):
    os.environ["KERAS_BACKEND"] = args.backend
    import keras_gemma

    kwargs = {"dtype": args.dtype} if args.dtype else {}
    model = keras_gemma.GemmaCausalLM.from_preset(args.preset, **kwargs)
    tokenizer = model.preprocessor.tokenizer
    hidden = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    prompt_ids = [np.array([tokenizer.bos_token_id] + tokenizer.tokenize(prompt), "int32")
                  for prompt, _ in jobs]

    def generate(ids, new_tokens):
        """The new token ids, as ``generate`` keeps them (up to a stop token)."""
        output = model.generate({"token_ids": ids}, max_length=len(ids) + new_tokens)
        kept = output["token_ids"][len(ids):][output["padding_mask"][len(ids):]]
        return [int(t) for t in kept]

    # One untimed call per compiled shape (prefill bucket, length bucket).
    shapes = {}
    for ids, (_, max_tokens) in zip(prompt_ids, jobs):
        for total in (len(ids) + 1, len(ids) + max_tokens):
            shapes.setdefault((-(-len(ids) // 32), -(-total // 128)), (ids, total - len(ids)))
    for ids, max_tokens in shapes.values():
        generate(ids, max_tokens)
    first_token = []
    for ids in prompt_ids:
        began = time.perf_counter()
        generate(ids, 1)
        first_token.append(time.perf_counter() - began)
    results, clock = [], 0.0
    start = time.perf_counter()
    for ids, (_, max_tokens), first in zip(prompt_ids, jobs, first_token):
        began = time.perf_counter()
        new = generate(ids, max_tokens)
        elapsed = time.perf_counter() - began
        results.append({"sent": start, "first": start + clock + first,
                        "end": start + clock + elapsed, "tokens": len(new),
                        "text": tokenizer.detokenize([t for t in new if t not in hidden])})
        clock += elapsed
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gemma3_270m")
    parser.add_argument("--backend", default="jax", choices=("jax", "tensorflow", "torch"))
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds each phase may take")
    parser.add_argument("--skip-one-by-one", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    jobs = requests(args.clients)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "settings": vars(args), "load_average_before": load_average()}

    process, port, lines = start_server(args)
    try:
        served = run_clients(port, jobs, args.timeout)
    finally:
        process.terminate()
        process.wait(60)
    report["server"] = summarize(served)
    report["load_average_after_server"] = load_average()
    print("server:", json.dumps(report["server"]), flush=True)

    if not args.skip_one_by_one:
        alone = one_by_one(args, jobs)
        report["one_by_one"] = summarize(alone)
        report["load_average_after_one_by_one"] = load_average()
        report["same_text"] = sum(a["text"] == s["text"] for a, s in zip(alone, served))
        report["speedup"] = round(report["server"]["aggregate_tokens_per_s"]
                                  / report["one_by_one"]["aggregate_tokens_per_s"], 2)
        print("one by one:", json.dumps(report["one_by_one"]))
        print(f"speedup {report['speedup']}x; {report['same_text']}/{len(jobs)} answers "
              "identical")
    out = Path(args.out or HERE / "results" / f"serve-{datetime.date.today()}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
