"""Gemma 4 decode benchmark: keras_gemma against keras-hub and transformers
on the same random weights.

Two shape families, each a seeded random ``Gemma4ForCausalLM`` written once by
transformers' ``save_pretrained`` (every weight random, norms and layer
scalars included), then read by keras_gemma from that folder and saved by
keras_gemma as a keras-hub preset for keras-hub's ``Gemma4Backbone``:

- ``e2b``: E2B's widths (hidden 1536, 8 query heads of 256, 1 key/value head,
  full layers with heads of 512, per-layer embeddings of 256, double-wide MLP
  on the KV-shared layers) with 7 layers instead of 35: E2B's first group of
  4 sliding + 1 full, then one sliding and one full layer that share the
  keys/values of layers 3 and 4 (as E2B's last 20 layers do) and have
  the double-wide MLP. Vocabulary 65,536 instead of 262,144 (for both
  embedding tables), so the LM head stays near its share of E2B's bytes read
  per token (~25% here, ~18% in E2B) and a run fits in the time this
  machine has.
- ``moe_<experts>_<top_k>``: 26B-A4B's layout at half its widths (hidden
  1408, 8 query heads of 256, 4 key/value heads, full layers with K = V, one
  key/value head of 512, dense MLP 1056 beside experts of width 352), 2
  layers (sliding, full) and a vocabulary of 8,192: 8 of 128 experts,
  8 of 16 and 2 of 128. ``moe_128_2`` uses the very weights of ``moe_128_8``.

Rows: keras_gemma on each backend (float32; int8 on JAX for ``e2b``),
keras-hub's Gemma4CausalLM on the same backend, transformers'
Gemma4ForCausalLM (eager attention) on torch; decode tokens/s at batch 1 and
16 (8-token prompts, end to end), greedy agreement against keras_gemma
float32 (leading tokens agreeing, as benchmarks/generate.py), ratios against
keras-hub and transformers within the run, and the expert-scaling table.

    python benchmarks/gemma4_generate.py                  # everything
    python benchmarks/gemma4_generate.py --quick          # smoke check (small widths)
    python benchmarks/generate.py --gemma4 --shapes moe_128_8,moe_16_8,moe_128_2

Reuses benchmarks/generate.py's runners, agreement and ratio functions.
See benchmarks/README.md ("Gemma 4").
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as base  # noqa: E402  (benchmarks/generate.py)

HERE = Path(__file__).resolve().parent
MARK = "@@GEMMA4@@ "
S, F = "sliding_attention", "full_attention"
ROPE = {  # every published Gemma 4 model's
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                       "rope_theta": 1_000_000.0},
}
COMMON = dict(rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
              final_logit_softcapping=30.0, pad_token_id=0, bos_token_id=2,
              eos_token_id=1, max_position_embeddings=4096, rope_parameters=ROPE,
              tie_word_embeddings=True)
E2B_REDUCED = dict(
    COMMON, vocab_size=65_536, hidden_size=1536, intermediate_size=6144,
    num_hidden_layers=7, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
    global_head_dim=512, sliding_window=512, layer_types=[S, S, S, S, F, S, F],
    num_kv_shared_layers=2, use_double_wide_mlp=True, hidden_size_per_layer_input=256,
    vocab_size_per_layer_input=65_536, attention_k_eq_v=False,
)
MOE_REDUCED = dict(
    COMMON, vocab_size=8192, hidden_size=1408, intermediate_size=1056,
    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
    num_global_key_value_heads=1, head_dim=256, global_head_dim=512,
    sliding_window=1024, layer_types=[S, F], attention_k_eq_v=True,
    hidden_size_per_layer_input=0, num_kv_shared_layers=0, enable_moe_block=True,
    moe_intermediate_size=352,
)
SHAPES = {
    "e2b": E2B_REDUCED,
    "moe_128_8": dict(MOE_REDUCED, num_experts=128, top_k_experts=8),
    "moe_16_8": dict(MOE_REDUCED, num_experts=16, top_k_experts=8),
    "moe_128_2": dict(MOE_REDUCED, num_experts=128, top_k_experts=2),
}
SAME_WEIGHTS_AS = {"moe_128_2": "moe_128_8"}  # only top_k differs
# --quick: the same layouts at small widths.
QUICK_OVERRIDES = {
    "e2b": dict(vocab_size=4096, vocab_size_per_layer_input=4096, hidden_size=256,
                intermediate_size=512, head_dim=64, global_head_dim=128,
                hidden_size_per_layer_input=32),
    "moe": dict(vocab_size=4096, hidden_size=256, intermediate_size=192, head_dim=64,
                global_head_dim=128, moe_intermediate_size=64),
}
FULL_SIZES = {"prompt": 8, "new": 32, "batch": 16, "agree_prompts": 8, "agree_new": 32}
QUICK_SIZES = {"prompt": 8, "new": 8, "batch": 4, "agree_prompts": 4, "agree_new": 8}


def shape_config(name, quick):
    config = dict(SHAPES[name])
    if quick:
        config.update(QUICK_OVERRIDES["moe" if name.startswith("moe") else "e2b"])
    return config


def active_parameters(config):
    """Parameters read per decoded token at batch 1: all but the experts not
    chosen and the per-layer embedding rows not looked up."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.Gemma4ForCausalLM(text_config(config))
    total = active = 0
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        if ".experts." in name:
            n = n * config["top_k_experts"] // config["num_experts"]
        elif "embed_tokens_per_layer" in name:
            n = n // config["vocab_size_per_layer_input"]
        active += n
    return total, active


def text_config(config):
    import transformers

    config = transformers.Gemma4TextConfig(**config)
    config._attn_implementation = "eager"
    return config


# -- preparation: one random model per shape, in both formats ----------------------


def child_prepare(spec):
    """Writes hf/ (transformers' save_pretrained) and keras_hub/ (our preset
    writer, from our reader of hf/) for one shape."""
    import torch
    import transformers

    sys.path.insert(0, str(base.REPO / "tests" / "data"))
    from make_hf_gemma4_oracle import randomize  # the oracle's "every weight random"

    import keras_gemma

    root, config = Path(spec["root"]), spec["config"]
    hf_dir, kh_dir = root / "hf", root / "keras_hub"
    source = spec.get("same_weights_as")
    if source:  # only top_k differs: the same tensors, another config.json
        hf_dir.mkdir(parents=True, exist_ok=True)
        for f in (Path(source) / "hf").iterdir():
            if f.suffix == ".safetensors":
                target = hf_dir / f.name
                if not target.exists():
                    os.link(f, target)
        text_config(config).save_pretrained(hf_dir)
    else:
        torch.manual_seed(0)
        model = transformers.Gemma4ForCausalLM(text_config(config)).eval()
        randomize(model, seed=0)
        model.tie_weights()
        model.save_pretrained(hf_dir)
        del model
    backbone = keras_gemma.GemmaBackbone.from_preset(str(hf_dir))
    backbone.save_to_preset(kh_dir)
    total, active = active_parameters(config)
    rng = np.random.default_rng(0)
    short = rng.integers(3, config["vocab_size"], (16, FULL_SIZES["prompt"]))
    short[:, 0] = config["bos_token_id"]
    return {"hf_dir": str(hf_dir), "keras_hub_preset": str(kh_dir),
            "parameters": int(backbone.count_params()), "hf_parameters": total,
            "active_parameters": active, "short": short.tolist(),
            "transformers_version": transformers.__version__}


def prepare(args, name):
    root = Path(args.cache_dir or os.environ.get(
        "KERAS_GEMMA_BENCH_CACHE", Path.home() / ".cache" / "keras_gemma_bench"))
    root = root / ("gemma4-quick" if args.quick else "gemma4") / name
    done = root / "done.json"
    config = shape_config(name, args.quick)
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("config") == config:
            return info
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    spec = {"task": "prepare", "root": str(root), "config": config}
    if name in SAME_WEIGHTS_AS:
        spec["same_weights_as"] = str(prepare(args, SAME_WEIGHTS_AS[name])["root"])
    base.log(f"preparing random weights for {name} in {root} (once) ...")
    info = run_child(spec, "torch", args.timeout_prepare)
    if info.get("status") == "error" or "hf_dir" not in info:
        raise SystemExit(f"preparation of {name} failed:\n{info.get('error')}\n"
                         f"{info.get('stderr_tail', '')}")
    info.update(root=str(root), config=config)
    done.write_text(json.dumps(info, indent=1))
    return info


# -- the measuring child -------------------------------------------------------------


class KerasGemmaGemma4Runner(base.KerasGemmaRunner):
    """keras_gemma reading the transformers folder (the path of a user who
    arrives with Hugging Face files); no tokenizer needed for token ids."""

    def __init__(self, folder, dtype):
        import keras_gemma

        backbone = keras_gemma.GemmaBackbone.from_preset(
            folder, dtype=None if dtype == "int8" else dtype)
        if dtype == "int8":
            backbone.quantize("int8")
        self.model = keras_gemma.GemmaCausalLM(backbone, preprocessor=None)
        self.model.compile(sampler="greedy")
        self.weight_bytes = base.keras_weight_bytes(backbone.weights)


class KerasHubGemma4Runner(base.KerasHubRunner):
    def __init__(self, preset, dtype):
        import keras_hub

        backbone = keras_hub.models.Gemma4Backbone.from_preset(preset, dtype=dtype)
        self.model = keras_hub.models.Gemma4CausalLM(backbone=backbone, preprocessor=None)
        self.model.compile(sampler="greedy")  # keras-hub's default is top_k
        self.weight_bytes = base.keras_weight_bytes(backbone.weights)


class TransformersGemma4Runner(base.TransformersRunner):
    def __init__(self, folder, dtype):
        import torch
        from transformers import Gemma4ForCausalLM

        self.torch = torch
        self.model = Gemma4ForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager").eval()
        self.model.generation_config.eos_token_id = None  # never stop early
        self.model.generation_config.pad_token_id = 0
        self.weight_bytes = int(sum(p.numel() * p.element_size()
                                    for p in self.model.parameters()))


def child_measure(spec):
    library, backend, dtype, sizes = spec["library"], spec["backend"], spec["dtype"], spec["sizes"]
    result = {"library": library, "backend": backend, "dtype": dtype, "shape": spec["shape"]}
    if library != "transformers":
        os.environ["KERAS_BACKEND"] = backend
        import keras

        assert keras.config.backend() == backend
    module = {"keras_gemma": "keras_gemma", "keras_hub": "keras_hub",
              "transformers": "transformers"}[library]
    result["version"] = __import__(module).__version__
    runner_class = {"keras_gemma": KerasGemmaGemma4Runner, "keras_hub": KerasHubGemma4Runner,
                    "transformers": TransformersGemma4Runner}[library]
    t = time.perf_counter()
    runner = runner_class(spec["keras_hub_preset"] if library == "keras_hub" else spec["hf_dir"],
                          dtype)
    result["load_s"] = time.perf_counter() - t
    result["weight_bytes"] = runner.weight_bytes
    short = np.asarray(spec["short"], "int32")[:, : sizes["prompt"]]

    def timed(ids, new):
        t = time.perf_counter()
        tokens = runner.generate(ids, new)
        return time.perf_counter() - t, tokens

    result["ttft_s"], _ = timed(short[:1], 1)  # compilation included
    for key, batch in (("b1", 1), ("bN", sizes["batch"])):
        ids = short[:batch]
        timed(ids, sizes["new"])  # warm-up: same shapes
        seconds, tokens = timed(ids, sizes["new"])
        result[f"decode_{key}_s"] = seconds
        result[f"decode_{key}_tok_s"] = batch * sizes["new"] / seconds
    result["decode_bN_batch"] = sizes["batch"]
    n, k = sizes["agree_prompts"], sizes["agree_new"]
    agree = tokens[:n, :k] if tokens.shape[1] >= k else runner.generate(short[:n], k)
    result["agree_tokens"] = np.asarray(agree).tolist()
    result["peak_rss"] = base.peak_rss_bytes()
    result["status"] = "ok"
    return result


def child_expert_steps(spec):
    """keras_gemma's decode step time (JAX) of every expert shape, in one
    process, interleaved, best of ``rounds``: on a shared machine the load
    changes between subprocesses, so the scaling is read from this, not from
    the rows. A step is (time of ``new`` tokens - time of 1 token) / (new - 1),
    so the prompt's prefill is left out."""
    import keras_gemma

    sizes, new = spec["sizes"], spec["sizes"]["new"]
    short = np.asarray(spec["short"], "int32")[:, : sizes["prompt"]]
    models = {}
    for shape, folder in spec["folders"].items():
        model = keras_gemma.GemmaCausalLM(keras_gemma.GemmaBackbone.from_preset(folder),
                                          preprocessor=None)
        model.compile(sampler="greedy")
        models[shape] = model
    times = {}
    for _ in range(spec["rounds"]):
        for shape, model in models.items():
            for batch in (1, sizes["batch"]):
                ids = short[:batch]
                inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
                for tokens in (1, new):
                    model.generate(inputs, max_length=ids.shape[1] + tokens,
                                   stop_token_ids=None)  # compiled after the first round
                    t = time.perf_counter()
                    model.generate(inputs, max_length=ids.shape[1] + tokens, stop_token_ids=None)
                    key = f"{shape}/{batch}/{tokens}"
                    times[key] = min(times.get(key, float("inf")), time.perf_counter() - t)
    rows = []
    for shape in models:
        for batch in (1, sizes["batch"]):
            step = (times[f"{shape}/{batch}/{new}"] - times[f"{shape}/{batch}/1"]) / (new - 1)
            rows.append({"shape": shape, "batch": batch, "step_ms": 1000 * step,
                         "prefill_and_one_token_s": times[f"{shape}/{batch}/1"]})
    return {"status": "ok", "rounds": spec["rounds"], "rows": rows,
            "peak_rss": base.peak_rss_bytes()}


def child_main(spec_json):
    spec = json.loads(spec_json)
    try:
        task = {"prepare": child_prepare, "measure": child_measure,
                "expert_steps": child_expert_steps}[spec["task"]]
        result = task(spec)
    except Exception:
        result = {"status": "error", "error": traceback.format_exc()[-3000:]}
    print(MARK + json.dumps(result), flush=True)


def run_child(spec, backend, timeout):
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = str(base.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=str(base.REPO))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"timed out after {timeout} s",
                "wall_s": time.perf_counter() - t}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]), wall_s=time.perf_counter() - t)
    return {"status": "error", "error": f"exit code {proc.returncode}",
            "stderr_tail": proc.stderr[-3000:], "wall_s": time.perf_counter() - t}


# -- parent: plan, tables, JSON ------------------------------------------------------


def plan_runs(args):
    """(shape, library, backend, dtype): every shape on the first backend
    (with transformers, and int8 for e2b) first, then e2b's other backends."""
    first, rest = [], []
    for shape in args.shapes:
        moe = shape.startswith("moe")
        for i, backend in enumerate(args.backends[:1] if moe else args.backends):
            for library in ("keras_gemma", "keras_hub"):
                if library in args.libraries:
                    (rest if i else first).append((shape, library, backend, "float32"))
        if "transformers" in args.libraries:
            first.append((shape, "transformers", "torch", "float32"))
        if not moe and args.int8 and "keras_gemma" in args.libraries and "jax" in args.backends:
            first.append((shape, "keras_gemma", "jax", "int8"))
    return first + rest


def analyse(report):
    """Agreement and ratios within each shape, the expert-scaling table."""
    by_shape = {}
    for r in report["runs"]:
        by_shape.setdefault(r["shape"], []).append(r)
    report["ratios"] = {}
    for shape, runs in by_shape.items():
        base.add_agreement(runs, report["sizes"])
        report["ratios"][shape] = base.ratios(runs)
    report["moe_scaling"] = moe_scaling(report["runs"])


def moe_scaling(runs):
    """Decode time per step of each expert shape, relative to 8 of 128."""
    rows = []
    ok = {(r["shape"], r["library"], r["backend"]): r for r in runs
          if r.get("status") == "ok" and r["dtype"] == "float32" and r["shape"].startswith("moe")}
    for (shape, library, backend), r in sorted(ok.items()):
        ref = ok.get(("moe_128_8", library, backend))
        row = {"library": library, "backend": backend, "shape": shape}
        for key in ("b1", "bN"):
            row[f"step_ms_{key}"] = 1000 * r[f"decode_{key}_s"] / r["sizes_new"]
            if ref:
                row[f"vs_128_8_{key}"] = r[f"decode_{key}_s"] / ref[f"decode_{key}_s"]
        rows.append(row)
    return rows


def table(report):
    bandwidth = report["bandwidth_bytes_per_s"]["best"]
    headers = ["shape", "library", "backend", "dtype", "load s", "TTFT s", "decode b1 tok/s",
               "% of bound", f"decode b{report['sizes']['batch']} tok/s", "peak RSS GB",
               f"agree>={min(16, report['sizes']['agree_new'])}"]
    rows = []
    for r in report["runs"]:
        row = [r["shape"], r["library"], r["backend"], r["dtype"]]
        if r.get("status") != "ok":
            error = str(r.get("error") or r.get("status")).strip().splitlines()
            rows.append(row + [f"{r.get('status')}: {error[-1][:90] if error else ''}"]
                        + [""] * (len(headers) - 5))
            continue
        info = report["shapes"][r["shape"]]
        # Bytes a decode step must read at batch 1 (chosen experts only).
        per_weight = r["weight_bytes"] / info["parameters"]
        bound = bandwidth / (per_weight * info["active_parameters"])
        r["decode_b1_pct_of_bound"] = 100 * r["decode_b1_tok_s"] / bound
        agree = r.get("agreement")
        row += [base.fmt(r["load_s"]), base.fmt(r["ttft_s"], 2),
                base.fmt(r["decode_b1_tok_s"], 2), base.fmt(r["decode_b1_pct_of_bound"]),
                base.fmt(r["decode_bN_tok_s"], 2), base.gb(r["peak_rss"]),
                f"{agree['prompts_agree_first_16']}/{agree['prompts']}" if agree else
                ("ref" if r["library"] == "keras_gemma" and r["dtype"] == "float32" else "-")]
        rows.append(row)
    return [headers] + rows


def markdown(report):
    def md(rows):
        return ["| " + " | ".join(str(c) for c in rows[0]) + " |",
                "|" + "---|" * len(rows[0])] + [
                    "| " + " | ".join(str(c) for c in r) + " |" for r in rows[1:]]

    lines = md(table(report))
    labels = ("TTFT", "decode b1", "decode bN", "load", "peak RSS")
    ratio_rows = [["shape", "keras_gemma", "vs", *labels]]
    for shape, entries in report["ratios"].items():
        for e in entries:
            ratio_rows.append([shape, e["ours"], e["other"], *(
                base.fmt(e[l], 2) + "x" if l in e else "-" for l in labels)])
    if len(ratio_rows) > 1:
        lines += [""] + md(ratio_rows)
    agree_rows = [["shape", "run", "reference", "leading tokens agreeing, per prompt"]]
    for r in report["runs"]:
        a = r.get("agreement")
        if a:
            agree_rows.append([r["shape"], f"{r['library']}/{r['backend']}/{r['dtype']}",
                               a["reference"], a["leading_tokens_agree"]])
    if len(agree_rows) > 1:
        lines += [""] + md(agree_rows)
    if report["moe_scaling"]:
        b = report["sizes"]["batch"]
        rows = [["library", "backend", "experts (top-k of n)", "ms/token b1",
                 f"ms/step b{b}", "b1 time vs 8 of 128", f"b{b} time vs 8 of 128"]]
        for m in report["moe_scaling"]:
            _, n, k = m["shape"].split("_")
            rows.append([m["library"], m["backend"], f"{k} of {n}",
                         base.fmt(m["step_ms_b1"]), base.fmt(m["step_ms_bN"]),
                         base.fmt(m.get("vs_128_8_b1"), 2), base.fmt(m.get("vs_128_8_bN"), 2)])
        lines += [""] + md(rows)
    steps = report.get("expert_steps") or {}
    if steps.get("rows"):
        by = {(r["shape"], r["batch"]): r["step_ms"] for r in steps["rows"]}
        rows = [["keras_gemma/jax, one process, best of " + str(steps["rounds"]),
                 "batch", "ms per decode step", "vs 8 of 128"]]
        for (shape, batch), ms in by.items():
            _, n, k = shape.split("_")
            ref = by.get(("moe_128_8", batch))
            rows.append([f"{k} of {n} experts", batch, base.fmt(ms),
                         base.fmt(ms / ref, 2) if ref else "-"])
        lines += [""] + md(rows)
    elif steps:
        lines += ["", f"expert steps: {steps.get('status')}: {str(steps.get('error'))[-300:]}"]
    return "\n".join(lines)


def load_average():
    try:
        return os.getloadavg()
    except OSError:
        return None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=None,
                   help=f"of {', '.join(SHAPES)} (default: all; --quick: e2b,moe_128_8)")
    p.add_argument("--libraries", default=",".join(base.ALL_LIBRARIES))
    p.add_argument("--backends", default=",".join(base.ALL_BACKENDS),
                   help="backends of the e2b rows (expert shapes: JAX, or the first with --quick)")
    p.add_argument("--no-int8", dest="int8", action="store_false",
                   help="skip keras_gemma int8 on JAX for e2b")
    p.add_argument("--no-expert-steps", dest="expert_steps", action="store_false",
                   help="skip the interleaved keras_gemma step timing of the expert shapes")
    p.add_argument("--expert-rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="small widths, 8 new tokens, batch 4, JAX only, two shapes, "
                   "no int8 (smoke check)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/gemma4-generate-<date>.json)")
    p.add_argument("--cache-dir")
    p.add_argument("--timeout", type=int, default=None,
                   help="seconds per measurement (default 600, 240 with --quick)")
    p.add_argument("--timeout-prepare", type=int, default=900)
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="start no measurement after this many minutes (later ones are "
                   "recorded as skipped)")
    p.add_argument("--markdown", metavar="JSON", help="print a results file as Markdown")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child is not None or args.markdown:
        return args
    if args.shapes is None:
        args.shapes = "e2b,moe_128_8" if args.quick else ",".join(SHAPES)
    for what, allowed in (("shapes", SHAPES), ("libraries", base.ALL_LIBRARIES),
                          ("backends", base.ALL_BACKENDS)):
        values = [x for x in getattr(args, what).split(",") if x]
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
        setattr(args, what, values)
    if args.quick:
        args.int8 = False
        if args.backends == list(base.ALL_BACKENDS):
            args.backends = ["jax"]
    if args.timeout is None:
        args.timeout = 240 if args.quick else 600
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args._child is not None or args.markdown:
        return (child_main(args._child) if args._child is not None
                else print(markdown(json.loads(Path(args.markdown).read_text()))))
    started = datetime.datetime.now()
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    out = Path(args.out) if args.out else HERE / "results" / (
        f"gemma4-generate-{started:%Y-%m-%d-%H%M}{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    base.log("measuring memory bandwidth ...")
    report = {"date": started.isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name] + sys.argv),
              "machine": base.machine_info(), "load_average_start": load_average(),
              "bandwidth_bytes_per_s": base.measure_bandwidth(),
              "sizes": sizes, "shapes": {}, "runs": []}
    shared = {}
    for shape in args.shapes:
        shared[shape] = prepare(args, shape)
        report["shapes"][shape] = {k: shared[shape][k] for k in (
            "config", "parameters", "hf_parameters", "active_parameters")}
    for shape, library, backend, dtype in plan_runs(args):
        info = shared[shape]
        spec = {"task": "measure", "shape": shape, "library": library, "backend": backend,
                "dtype": dtype, "sizes": sizes, "short": info["short"],
                "hf_dir": info["hf_dir"], "keras_hub_preset": info["keras_hub_preset"]}
        minutes = (datetime.datetime.now() - started).total_seconds() / 60
        if args.budget_minutes is not None and minutes > args.budget_minutes:
            result = {"status": "skipped",
                      "error": f"not started: the {args.budget_minutes:g}-minute budget was spent"}
        else:
            base.log(f"running {shape} / {library} / {backend} / {dtype} (load average "
                     f"{load_average()[0]:.1f}) ...")
            result = run_child(spec, backend, args.timeout)
        result.update(shape=shape, library=library, backend=backend, dtype=dtype,
                      sizes_new=sizes["new"], load_average=load_average())
        if result.get("status") == "ok":
            base.log(f"  ok in {result['wall_s']:.0f} s: decode b1 {result['decode_b1_tok_s']:.2f}"
                     f" tok/s, b{sizes['batch']} {result['decode_bN_tok_s']:.2f} tok/s")
        else:
            base.log(f"  {result.get('status')}: {str(result.get('error'))[-600:]}"
                     f"{result.get('stderr_tail', '')[-600:]}")
        report["runs"].append(result)
        analyse(report)
        report["table"] = table(report)
        out.write_text(json.dumps(report, indent=1))
    moe = [shape for shape in args.shapes if shape.startswith("moe")]
    if args.expert_steps and len(moe) > 1 and "keras_gemma" in args.libraries:
        base.log(f"keras_gemma decode steps of {', '.join(moe)}, interleaved, best of "
                 f"{args.expert_rounds} (load average {load_average()[0]:.1f}) ...")
        spec = {"task": "expert_steps", "sizes": sizes, "rounds": args.expert_rounds,
                "short": shared[moe[0]]["short"],
                "folders": {shape: shared[shape]["hf_dir"] for shape in moe}}
        report["expert_steps"] = dict(run_child(spec, "jax", args.timeout),
                                      load_average=load_average())
    analyse(report)
    report["load_average_end"] = load_average()
    end = base.measure_bandwidth()
    report["bandwidth_bytes_per_s_end"] = end
    if end["best"] > report["bandwidth_bytes_per_s"]["best"]:
        report["bandwidth_bytes_per_s"]["best"] = end["best"]
    report["table"] = table(report)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nread bandwidth {report['bandwidth_bytes_per_s']['best'] / 1e9:.1f} GB/s; load "
          f"average {report['load_average_start']} -> {report['load_average_end']}\n")
    print(markdown(report))
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
