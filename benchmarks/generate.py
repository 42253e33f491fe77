"""Generation benchmark: keras_gemma against keras-hub, transformers and llama.cpp.

One command measures, on the same weights and the same prompts (token ids),
for keras_gemma on each Keras backend, keras-hub on the same backend,
transformers on torch and llama.cpp (``llama-cpp-python``, when installed;
see ``llama_cpp_bench.py``):

- load time and peak resident memory while loading,
- time to first token (a fresh model's first ``generate`` call producing one
  token: tracing and compilation included),
- prefill tokens/s (one prompt of 512 tokens, one new token),
- decode tokens/s at batch 1 and batch 16 (8-token prompts, 128 new tokens,
  end to end: exactly 128 greedy tokens per row, no stop tokens),
- peak resident memory of the whole measurement,
- decode speed as a percentage of the memory-bandwidth bound (this machine's
  measured read bandwidth / bytes of weights read per decoded token),
- greedy agreement: every run's continuations of 8 fixed prompts (32 tokens)
  are compared with keras_gemma float32 on the same backend (transformers:
  with keras_gemma float32 on torch; llama.cpp: on JAX), reporting leading
  tokens that agree.

Each (library, backend, dtype) runs in its own subprocess with a timeout, so
the Keras backend and peak RSS are per measurement. Results are printed as a
table and written as JSON (``benchmarks/results/generate-<date>.json`` or
``--out``); a partial file is rewritten after every run.

    .venv/bin/python benchmarks/generate.py                 # everything
    .venv/bin/python benchmarks/generate.py --quick         # smoke check
    .venv/bin/python benchmarks/generate.py --backends jax --dtypes float32,int8

See benchmarks/README.md for what each number means.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llama_cpp_bench  # noqa: E402  (beside this file)

REPO = HERE.parent
MARK = "@@BENCH@@ "
ALL_LIBRARIES = ("keras_gemma", "keras_hub", "transformers", "llama_cpp")
ALL_BACKENDS = ("jax", "tensorflow", "torch")
ALL_DTYPES = ("float32", "int8", "bfloat16")
BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "int8": 1}

FULL_SIZES = {"prefill": 512, "prompt": 8, "new": 128, "batch": 16,
              "agree_prompts": 8, "agree_new": 32, "prefill_reps": 2,
              "decode_reps": 3}
QUICK_SIZES = {"prefill": 64, "prompt": 8, "new": 16, "batch": 4,
               "agree_prompts": 8, "agree_new": 32, "prefill_reps": 1,
               "decode_reps": 1}

# Benchmark prompts: each is cut to exactly `prompt` tokens (<bos> included),
# so no library has to pad and all see identical token ids.
PROMPTS = [
    "The capital of France is a city that is known for",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors of light are red, green and",
    "Water boils at one hundred degrees Celsius at sea level because",
    "In 1969, the first human beings walked on the surface of the",
    "The best way to learn a new programming language is to write",
    "Photosynthesis is the process by which green plants turn sunlight into",
    "My favourite recipe for a quick weeknight dinner starts with",
    "The stock market fell sharply on Monday after the central bank",
    "To install the package, open a terminal and type the following command",
    "The theory of general relativity, published by Albert Einstein in",
    "Dear hiring manager, I am writing to apply for the position of",
    "The largest planet in our solar system is Jupiter, which has more",
    "A balanced diet should include fruit, vegetables, whole grains and",
    "The train left the station at exactly seven o'clock in the morning and",
]
LONG_TEXT = (
    "The history of computing is a story of people trying to make machines do "
    "arithmetic faster and more reliably than humans could. Early mechanical "
    "calculators, such as the ones designed by Pascal and Leibniz, could add "
    "and multiply, but they were expensive and fragile. In the nineteenth "
    "century Charles Babbage designed the Analytical Engine, a general purpose "
    "machine programmed with punched cards, and Ada Lovelace wrote what many "
    "consider the first computer program for it. The twentieth century brought "
    "electronic machines: vacuum tubes gave way to transistors, transistors to "
    "integrated circuits, and integrated circuits to microprocessors holding "
    "billions of switches on a chip smaller than a fingernail. Along the way, "
    "programming languages grew from raw machine code to assembly, then to "
    "FORTRAN, COBOL, Lisp and C, and later to Python, Java and many others. "
    "Memory became cheaper by many orders of magnitude, storage moved from "
    "magnetic drums and tapes to disks and flash, and networks connected "
    "machines across campuses, countries and finally the whole planet. Today a "
    "phone in a pocket is more powerful than the supercomputers of a few "
    "decades ago, and machine learning models trained on enormous collections "
    "of text can write essays, translate languages and answer questions. "
)


# -- small helpers shared by parent and children ---------------------------------


def peak_rss_bytes():
    import resource

    # Linux reports ru_maxrss in kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes():
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cache_dir(args):
    base = Path(args.cache_dir or os.environ.get(
        "KERAS_GEMMA_BENCH_CACHE", Path.home() / ".cache" / "keras_gemma_bench"))
    return base / ("random" if args.random_weights else "gemma3_270m")


# -- memory bandwidth ---------------------------------------------------------------


def measure_bandwidth(gigabytes=1.0, reps=8):
    """Best-of read bandwidth (bytes/s) of summing a large float32 array.

    Measured single-threaded and with one thread per core (numpy releases the
    GIL in reductions); the faster figure is reported.
    """
    n = int(gigabytes * 2**30 // 4)
    a = np.ones(n, dtype="float32")
    a.sum()  # touch every page
    results = {}
    best = 0.0
    for r in range(reps):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t))
    results["single_thread"] = best
    threads = max(1, os.cpu_count() or 1)
    chunks = np.array_split(a, threads)
    best = 0.0
    for r in range(reps):
        workers = [threading.Thread(target=c.sum) for c in chunks]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, a.nbytes / (time.perf_counter() - t))
    results[f"{threads}_threads"] = best
    results["best"] = max(results.values())
    results["array_bytes"] = int(a.nbytes)
    return results


# -- preparation: one set of weights and prompts for every library -------------------


def prepare(args):
    """Writes the shared artifacts (once; reused while they exist).

    - ``keras_hub/``: a keras-hub-layout preset (``keras_gemma.convert`` of
      the real GGUF, or a seeded random model of the same shape),
    - ``hf/``: the same weights as a transformers folder (config.json +
      model.safetensors), written from our arrays by name,
    - ``prompts.json``: the token ids every library is given.
    """
    root = cache_dir(args)
    done = root / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    root.mkdir(parents=True, exist_ok=True)
    log(f"preparing shared weights and prompts in {root} (once) ...")
    spec = {"task": "prepare", "random_weights": args.random_weights, "root": str(root)}
    result = run_child(spec, backend="torch", timeout=args.timeout_prepare)
    if result.get("error"):
        raise SystemExit(f"preparation failed:\n{result['error']}")
    done.write_text(json.dumps(result, indent=1))
    return result


def child_prepare(spec):
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    import keras_gemma
    from keras_gemma import preset_io

    root = Path(spec["root"])
    kh_dir = root / "keras_hub"
    info = {"root": str(root)}
    tokenizer = None
    if spec["random_weights"]:
        keras.utils.set_random_seed(0)
        backbone = keras_gemma.GemmaBackbone.from_preset("gemma3_270m", load_weights=False)
        try:
            tokenizer = preset_io.load_tokenizer("gemma3_270m")
        except Exception as error:  # the random model needs no tokenizer
            log(f"no tokenizer ({error}); prompts are random token ids")
        preset_io.save_preset(kh_dir, backbone=backbone, tokenizer=tokenizer)
        info["weights"] = "random (seed 0), gemma3_270m shape"
        info["keras_gemma_preset"] = str(kh_dir)
    else:
        model = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
        backbone, tokenizer = model.backbone, model.preprocessor.tokenizer
        model.save_to_preset(kh_dir)
        source = preset_io.resolve("gemma3_270m")
        info["weights"] = f"gemma3_270m from {source.path.name} (dequantized to float32)"
        info["gguf"] = str(source.path)
        info["keras_gemma_preset"] = "gemma3_270m"
    info["keras_hub_preset"] = str(kh_dir)
    info["parameters"] = int(backbone.count_params())
    info["hf_dir"] = str(write_hf_folder(backbone, root / "hf"))
    info["prompts"] = make_prompts(tokenizer, backbone.vocabulary_size)
    info["prompts_file"] = str(root / "prompts.json")
    return info


def write_hf_folder(backbone, folder):
    """Our weights as a transformers Gemma 3 text folder, tensor by tensor."""
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3ForCausalLM
    from transformers import Gemma3TextConfig

    from keras_gemma.checkpoints.huggingface import our_name

    c = backbone._config()
    pattern = c["sliding_window_pattern"]
    config = Gemma3TextConfig(
        vocab_size=c["vocabulary_size"], hidden_size=c["hidden_dim"],
        intermediate_size=c["intermediate_dim"], num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_query_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        rms_norm_eps=c["layer_norm_epsilon"],
        query_pre_attn_scalar=c["query_pre_attn_scalar"],
        sliding_window=c["sliding_window_size"],
        layer_types=[
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(c["num_layers"])
        ],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": c["rope_max_wavelength"]},
            "sliding_attention": {"rope_type": "default",
                                  "rope_theta": c["local_rope_max_wavelength"]},
        },
        max_position_embeddings=32768, tie_word_embeddings=True,
        architectures=["Gemma3ForCausalLM"],
    )
    with torch.device("meta"):
        names = list(Gemma3ForCausalLM(config).state_dict())
    ours = {v.path: v for v in backbone.weights}
    tensors = {}
    for name in names:
        path = our_name(name, c)
        if path is None:
            continue  # lm_head: tied to the embedding
        array = np.asarray(keras_value(ours.pop(path)), dtype="float32")
        if path.endswith("/kernel"):
            array = array.T  # torch Linear is (out, in)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
    if ours:
        raise RuntimeError(f"weights without a transformers name: {sorted(ours)[:5]}")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    return folder


def keras_value(variable):
    from keras import ops

    return ops.convert_to_numpy(variable.value)


def make_prompts(tokenizer, vocabulary_size):
    """Token ids: 16 prompts of 8 tokens and one of 512 (<bos> first)."""
    rng = np.random.default_rng(0)
    sizes = (FULL_SIZES["prompt"], FULL_SIZES["prefill"])
    if tokenizer is None:
        short = rng.integers(3, vocabulary_size, (len(PROMPTS), sizes[0]))
        short[:, 0] = 2
        long = rng.integers(3, vocabulary_size, sizes[1])
        long[0] = 2
        return {"short": short.tolist(), "long": long.tolist(), "texts": None}
    bos = tokenizer.bos_token_id
    short = []
    for text in PROMPTS:
        ids = [bos] + list(tokenizer.tokenize(text))
        if len(ids) < sizes[0]:
            raise RuntimeError(f"prompt too short: {text!r}")
        short.append([int(i) for i in ids[: sizes[0]]])
    long = [bos]
    while len(long) < sizes[1]:
        long += [int(i) for i in tokenizer.tokenize(LONG_TEXT)]
    return {"short": short, "long": long[: sizes[1]], "texts": PROMPTS}


# -- the measuring child -------------------------------------------------------------


class Runner:
    """generate(ids (B, L) int32, new) -> (B, new) greedy token ids, exactly."""

    weight_bytes = None

    def generate(self, ids, new):
        raise NotImplementedError


class KerasGemmaRunner(Runner):
    def __init__(self, preset, dtype, load_only_preset=None):
        import keras_gemma

        kwargs = {}
        if dtype == "int8":
            kwargs["quantize"] = "int8"
        else:
            kwargs["dtype"] = dtype
        try:
            self.model = keras_gemma.GemmaCausalLM.from_preset(preset, **kwargs)
        except TypeError as error:
            if "quantize" in kwargs and "quantize" in str(error):
                raise NotAvailable(f"from_preset(quantize='int8') not available: {error}")
            raise
        self.model.compile(sampler="greedy")
        self.weight_bytes = keras_weight_bytes(self.model.backbone.weights)

    def generate(self, ids, new):
        batch, length = ids.shape
        out = self.model.generate(
            {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)},
            max_length=length + new, stop_token_ids=None,
        )
        tokens = np.asarray(out["token_ids"])
        assert tokens.shape == (batch, length + new), tokens.shape
        assert (tokens[:, :length] == ids).all(), "prompt was changed"
        return tokens[:, length:]


class KerasHubRunner(Runner):
    def __init__(self, preset, dtype):
        import keras_hub

        kwargs = {} if dtype == "int8" else {"dtype": dtype}
        backbone = keras_hub.models.Gemma3Backbone.from_preset(preset, **kwargs)
        self.model = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
        if dtype == "int8":
            self.model.quantize("int8")
        self.model.compile(sampler="greedy")  # keras-hub's default is top_k
        self.weight_bytes = keras_weight_bytes(self.model.backbone.weights)

    def generate(self, ids, new):
        from keras import ops

        batch, length = ids.shape
        pad = ((0, 0), (0, new))
        inputs = {"token_ids": np.pad(ids, pad),
                  "padding_mask": np.pad(np.ones_like(ids, bool), pad)}
        # What `CausalLM.generate` does for one batch without a preprocessor,
        # minus its output concatenation, which fails on Gemma 3's
        # `"images": None` output in keras-hub 0.32.
        generate_function = self.model.make_generate_function()
        out = generate_function({k: ops.convert_to_tensor(v) for k, v in inputs.items()},
                                stop_token_ids=None)
        tokens = np.asarray(ops.convert_to_numpy(out["token_ids"]))
        mask = np.asarray(ops.convert_to_numpy(out["padding_mask"]))
        assert tokens.shape == (batch, length + new), tokens.shape
        assert mask.all(), "keras-hub did not fill every position"
        assert (tokens[:, :length] == ids).all(), "prompt was changed"
        return tokens[:, length:]


class TransformersRunner(Runner):
    def __init__(self, folder, dtype):
        import torch
        from transformers import AutoModelForCausalLM

        if dtype == "int8":
            raise NotAvailable(
                "transformers has no weight-only int8 path on CPU without extra "
                "packages (bitsandbytes/quanto/torchao)")
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
        self.model.eval()
        self.model.generation_config.eos_token_id = None  # never stop early
        self.model.generation_config.pad_token_id = 0
        self.weight_bytes = int(sum(p.numel() * p.element_size()
                                    for p in self.model.parameters()))

    def generate(self, ids, new):
        torch = self.torch
        batch, length = ids.shape
        x = torch.from_numpy(np.asarray(ids, "int64"))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=x, attention_mask=torch.ones_like(x),
                max_new_tokens=new, do_sample=False, eos_token_id=None,
            )
        tokens = out.numpy()
        assert tokens.shape == (batch, length + new), tokens.shape
        assert (tokens[:, :length] == ids).all(), "prompt was changed"
        return tokens[:, length:]


class NotAvailable(Exception):
    pass


def keras_weight_bytes(weights):
    import keras

    total = 0
    for w in weights:
        itemsize = np.dtype(keras.backend.standardize_dtype(w.dtype).replace(
            "bfloat16", "float16")).itemsize
        total += int(np.prod(w.shape)) * itemsize
    return total


def child_measure(spec):
    library, backend, dtype = spec["library"], spec["backend"], spec["dtype"]
    sizes, prompts = spec["sizes"], spec["prompts"]
    result = {"library": library, "backend": backend, "dtype": dtype}
    t = time.perf_counter()
    if library == "llama_cpp":
        import llama_cpp

        result["version"] = llama_cpp.__version__
        result["dtype_label"] = llama_cpp_bench.label(dtype)
    elif library == "transformers":
        import torch  # noqa: F401
        import transformers

        result["version"] = transformers.__version__
    else:
        os.environ["KERAS_BACKEND"] = backend
        import keras

        if library == "keras_hub":
            import keras_hub

            result["version"] = keras_hub.__version__
        else:
            import keras_gemma

            result["version"] = keras_gemma.__version__
        assert keras.config.backend() == backend
    result["import_s"] = time.perf_counter() - t
    result["rss_after_import"] = current_rss_bytes()

    t = time.perf_counter()
    try:
        if library == "llama_cpp":
            runner = llama_cpp_bench.LlamaCppRunner(
                spec["gguf_file"], max(sizes["prefill"] + 1, sizes["prompt"] + sizes["new"]))
        elif library == "keras_gemma":
            runner = KerasGemmaRunner(spec["keras_gemma_preset"], dtype)
        elif library == "keras_hub":
            runner = KerasHubRunner(spec["keras_hub_preset"], dtype)
        else:
            runner = TransformersRunner(spec["hf_dir"], dtype)
    except NotAvailable as error:
        result["status"] = "not available"
        result["note"] = str(error)
        return result
    result["load_s"] = time.perf_counter() - t
    result["load_peak_rss"] = peak_rss_bytes()
    result["weight_bytes"] = runner.weight_bytes
    result["status"] = "ok"
    if spec.get("load_only"):
        result["peak_rss"] = peak_rss_bytes()
        return result

    short = np.asarray(prompts["short"], "int32")[:, : sizes["prompt"]]
    long = np.asarray(prompts["long"], "int32")[None, : sizes["prefill"]]

    def timed(ids, new):
        t = time.perf_counter()
        tokens = runner.generate(ids, new)
        seconds = time.perf_counter() - t
        assert tokens.shape == (ids.shape[0], new)
        return seconds, tokens

    # Time to first token: a fresh model's first call, compilation included.
    result["ttft_s"], first = timed(short[:1], 1)
    result["first_token"] = int(first[0, 0])

    # Prefill: one prompt of `prefill` tokens, one new token; best of reps.
    timed(long, 1)  # compile / warm up for this shape
    times = [timed(long, 1)[0] for _ in range(sizes["prefill_reps"])]
    result["prefill_s"] = min(times)
    result["prefill_tok_s"] = sizes["prefill"] / min(times)

    # Decode: exactly `new` tokens per row, end to end (prefill of the short
    # prompt included), after a warm-up call with the same shapes; best of
    # `decode_reps` calls (this host's memory bandwidth varies from second to
    # second: single batch-1 calls of one process differ by 10-20%).
    for key, batch in (("b1", 1), ("bN", sizes["batch"])):
        ids = short[:batch]
        timed(ids, sizes["new"])
        seconds, tokens = min((timed(ids, sizes["new"]) for _ in range(sizes.get("decode_reps", 1))),
                              key=lambda timing: timing[0])
        result[f"decode_{key}_s"] = seconds
        result[f"decode_{key}_tok_s"] = batch * sizes["new"] / seconds
        if key == "bN":
            result["decode_bN_batch"] = batch
            bN_tokens = tokens
        else:
            result["decode_b1_tokens"] = tokens[0].tolist()

    # Greedy continuations for the agreement check (untimed).
    n, k = sizes["agree_prompts"], sizes["agree_new"]
    if bN_tokens.shape[0] >= n and bN_tokens.shape[1] >= k:
        agree = bN_tokens[:n, :k]
    else:
        agree = runner.generate(short[:n], k)
    result["agree_tokens"] = agree.tolist()
    result["peak_rss"] = peak_rss_bytes()
    return result


# -- parent: children, table, JSON --------------------------------------------------


def log(message):
    print(message, file=sys.stderr, flush=True)


def run_child(spec, backend, timeout):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired as error:
        tail = (error.stderr or b"")
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"status": "timeout", "error": f"timed out after {timeout} s",
                "stderr_tail": tail[-2000:], "wall_s": time.perf_counter() - t}
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
            result["wall_s"] = wall
            return result
    return {"status": "error", "error": f"exit code {proc.returncode}",
            "stderr_tail": proc.stderr[-3000:], "wall_s": wall}


def child_main(spec_json):
    spec = json.loads(spec_json)
    try:
        if spec["task"] == "prepare":
            result = child_prepare(spec)
        elif spec["task"] == "prepare_llama_cpp":
            result = llama_cpp_bench.prepare_files(spec["gguf"], spec["folder"])
        else:
            result = child_measure(spec)
    except Exception:
        result = {"status": "error", "error": traceback.format_exc()[-3000:]}
        for key in ("library", "backend", "dtype"):
            if key in spec:
                result[key] = spec[key]
    print(MARK + json.dumps(result), flush=True)


def plan_runs(args):
    runs = []
    for dtype in args.dtypes:
        for backend in args.backends:
            for library in ("keras_gemma", "keras_hub"):
                if library in args.libraries:
                    runs.append((library, backend, dtype, False))
        if "transformers" in args.libraries:
            runs.append(("transformers", "torch", dtype, False))
    if "llama_cpp" in args.libraries:
        runs += [("llama_cpp", "cpu", d, False) for d in llama_cpp_bench.dtypes_for(args.dtypes)]
    if "keras_gemma" in args.libraries and "float32" in args.dtypes and not args.random_weights:
        # keras_gemma's default load reads the GGUF; also time loading the
        # same .h5 preset keras-hub reads, for a like-for-like load figure.
        for backend in args.backends:
            runs.append(("keras_gemma", backend, "float32", True))
    return runs


def prepare_llama_cpp(args, shared):
    """{dtype: GGUF path} for llama.cpp's runs, or a note saying why there are none."""
    if not llama_cpp_bench.available():
        return llama_cpp_bench.NOT_INSTALLED
    if "gguf" not in shared:
        return "llama.cpp runs the real GGUF; not with --random-weights"
    spec = {"task": "prepare_llama_cpp", "gguf": shared["gguf"],
            "folder": str(cache_dir(args) / "llama_cpp")}
    log("requantizing the GGUF with llama.cpp (F32, Q8_0; once) ...")
    files = run_child(spec, backend="jax", timeout=args.timeout_prepare)
    if files.get("status") == "error":
        raise SystemExit(f"llama.cpp requantization failed:\n{files['error']}")
    files.pop("wall_s", None)
    return files


def leading_agreement(a, b):
    a, b = np.asarray(a), np.asarray(b)
    out = []
    for x, y in zip(a, b):
        differ = np.nonzero(x != y)[0]
        out.append(int(differ[0]) if len(differ) else int(len(x)))
    return out


def add_agreement(results, sizes):
    """Leading greedy tokens agreeing with keras_gemma float32 (same backend)."""
    refs = {r["backend"]: r for r in results
            if r.get("library") == "keras_gemma" and r.get("dtype") == "float32"
            and r.get("status") == "ok" and "agree_tokens" in r}
    rows = []
    for r in results:
        if r.get("status") != "ok" or "agree_tokens" not in r:
            continue
        ref_backend = r["backend"]
        if r["library"] == "llama_cpp":
            ref_backend = "jax" if "jax" in refs else min(refs, default=None)
        elif r["library"] == "transformers" and "torch" not in refs and refs:
            ref_backend = sorted(refs)[0]  # keras_gemma float32 on another backend
        ref = refs.get(ref_backend)
        if ref is None or ref is r:
            continue
        lead = leading_agreement(r["agree_tokens"], ref["agree_tokens"])
        threshold = min(16, sizes["agree_new"])
        r["agreement"] = {
            "reference": f"keras_gemma/{ref_backend}/float32",
            "leading_tokens_agree": lead,
            "prompts_agree_first_16": sum(x >= threshold for x in lead),
            "prompts": len(lead),
            "tokens_per_prompt": sizes["agree_new"],
        }
        rows.append(r)
    return rows


def gb(x):
    return "-" if x is None else f"{x / 1e9:.2f}"


def fmt(x, digits=1):
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


def table(results, bandwidth, sizes):
    headers = ["library", "backend", "dtype", "load s", "load peak GB", "TTFT s",
               f"prefill{sizes['prefill']} tok/s", "decode b1 tok/s", "% of bound",
               f"decode b{sizes['batch']} tok/s", "peak RSS GB", "agree>=16"]
    rows = []
    for r in results:
        name = r["library"] + (" (.h5)" if r.get("load_only") else "")
        row = [name, r["backend"], r.get("dtype_label", r["dtype"])]
        if r.get("status") != "ok":
            why = r.get("status", "error")
            if why == "not available":
                why += ": " + r.get("note", "")[:60]
            rows.append(row + [why] + [""] * (len(headers) - 4))
            continue
        bound = bandwidth / r["weight_bytes"] if r.get("weight_bytes") else None
        pct = (100 * r["decode_b1_tok_s"] / bound) if bound and "decode_b1_tok_s" in r else None
        r["decode_b1_bound_tok_s"] = bound
        r["decode_b1_pct_of_bound"] = pct
        agree = r.get("agreement")
        agree_text = (f"{agree['prompts_agree_first_16']}/{agree['prompts']}"
                      if agree else ("ref" if r["library"] == "keras_gemma"
                                     and r["dtype"] == "float32" and not r.get("load_only") else "-"))
        row += [fmt(r.get("load_s")), gb(r.get("load_peak_rss")), fmt(r.get("ttft_s"), 2),
                fmt(r.get("prefill_tok_s")), fmt(r.get("decode_b1_tok_s"), 2),
                fmt(pct), fmt(r.get("decode_bN_tok_s"), 2), gb(r.get("peak_rss")), agree_text]
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines.append("-|-".join("-" * w for w in widths))
    for row in rows:
        lines.append(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    return "\n".join(lines)


METRICS = (("ttft_s", "TTFT", True), ("prefill_tok_s", "prefill", False),
           ("decode_b1_tok_s", "decode b1", False), ("decode_bN_tok_s", "decode bN", False),
           ("load_s", "load", True), ("peak_rss", "peak RSS", True))


def ratios(results):
    """keras_gemma / other, as speed-ups: > 1 means keras_gemma is better."""
    ok = {(r["library"], r["backend"], r["dtype"]): r for r in results
          if r.get("status") == "ok" and not r.get("load_only")}
    out = []
    for (library, backend, dtype), ours in sorted(ok.items()):
        if library != "keras_gemma":
            continue
        for other_key in (("keras_hub", backend, dtype), ("transformers", "torch", dtype),
                          ("llama_cpp", "cpu", dtype)):
            other = ok.get(other_key)
            if other is None:
                continue
            entry = {"ours": f"keras_gemma/{backend}/{dtype}",
                     "other": "/".join(other_key[:2] + (other.get("dtype_label", dtype),))}
            for key, label, lower_better in METRICS:
                if key in ours and key in other and ours[key] and other[key]:
                    entry[label] = (other[key] / ours[key]) if lower_better else (ours[key] / other[key])
            out.append(entry)
    return out


def ratio_table(entries):
    labels = [m[1] for m in METRICS]
    headers = ["keras_gemma", "vs"] + labels
    rows = [[e["ours"], e["other"]] + [fmt(e.get(l), 2) + "x" if l in e else "-" for l in labels]
            for e in entries]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(headers, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def markdown(report):
    """The results table and ratios of a report, as Markdown."""
    lines = []
    text = report.get("table", "")
    rows = [line.split(" | ") for line in text.splitlines() if line and not line.startswith("-")]
    if rows:
        lines.append("| " + " | ".join(c.strip() for c in rows[0]) + " |")
        lines.append("|" + "---|" * len(rows[0]))
        lines += ["| " + " | ".join(c.strip() for c in r) + " |" for r in rows[1:]]
    entries = report.get("ratios", [])
    if entries:
        labels = [m[1] for m in METRICS]
        lines += ["", "| keras_gemma | vs | " + " | ".join(labels) + " |",
                  "|" + "---|" * (len(labels) + 2)]
        for e in entries:
            lines.append(f"| {e['ours']} | {e['other']} | " + " | ".join(
                (fmt(e[l], 2) + "x") if l in e else "-" for l in labels) + " |")
    agreements = [r for r in report.get("runs", []) if r.get("agreement")]
    if agreements:
        lines += ["", "| run | reference | leading tokens agreeing (of "
                  f"{agreements[0]['agreement']['tokens_per_prompt']}), per prompt | prompts agreeing on >= 16 |",
                  "|---|---|---|---|"]
        for r in agreements:
            a = r["agreement"]
            lines.append(f"| {r['library']}/{r['backend']}/{r['dtype']} | {a['reference']} | "
                         f"{a['leading_tokens_agree']} | {a['prompts_agree_first_16']}/{a['prompts']} |")
    return "\n".join(lines)


def machine_info():
    info = {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--libraries", default=",".join(ALL_LIBRARIES))
    p.add_argument("--backends", default=",".join(ALL_BACKENDS))
    p.add_argument("--dtypes", default=",".join(ALL_DTYPES))
    p.add_argument("--quick", action="store_true",
                   help="small sizes for a smoke check (prefill 64, 16 new tokens, batch 4)")
    p.add_argument("--random-weights", action="store_true",
                   help="a seeded random model of gemma3_270m's shape instead of the real one")
    p.add_argument("--out", help="JSON path (default benchmarks/results/generate-<date>.json)")
    p.add_argument("--cache-dir", help="where shared weights/prompts are kept "
                   "(default ~/.cache/keras_gemma_bench)")
    p.add_argument("--timeout", type=int, default=None,
                   help="seconds per measurement (default 1500, 600 with --quick)")
    p.add_argument("--timeout-prepare", type=int, default=1200)
    p.add_argument("--markdown", metavar="JSON",
                   help="print the tables of a results file as Markdown and exit")
    p.add_argument("--gemma4", action="store_true",
                   help="run the Gemma 4 row set instead (benchmarks/gemma4_generate.py; "
                   "its own flags, see --gemma4 --help)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child is not None:
        return args
    args.libraries = [x for x in args.libraries.split(",") if x]
    args.backends = [x for x in args.backends.split(",") if x]
    args.dtypes = [x for x in args.dtypes.split(",") if x]
    for values, allowed, what in ((args.libraries, ALL_LIBRARIES, "library"),
                                  (args.backends, ALL_BACKENDS, "backend"),
                                  (args.dtypes, ALL_DTYPES, "dtype")):
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    if args.timeout is None:
        args.timeout = 600 if args.quick else 1500
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--gemma4" in argv:  # the Gemma 4 row set: benchmarks/gemma4_generate.py
        import gemma4_generate

        return gemma4_generate.main([a for a in argv if a != "--gemma4"])
    args = parse_args(argv)
    if args._child is not None:
        return child_main(args._child)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    started = datetime.datetime.now()
    out = Path(args.out) if args.out else (
        HERE / "results" / f"generate-{started:%Y-%m-%d-%H%M%S}{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    log("measuring memory bandwidth ...")
    bandwidth = measure_bandwidth()
    log(f"  read bandwidth {bandwidth['best'] / 1e9:.1f} GB/s")
    shared = prepare(args)
    prompts = shared["prompts"]
    spec_base = {"task": "measure", "sizes": sizes, "prompts": prompts,
                 "keras_gemma_preset": shared["keras_gemma_preset"],
                 "keras_hub_preset": shared["keras_hub_preset"], "hf_dir": shared["hf_dir"]}
    report = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine_info(),
        "bandwidth_bytes_per_s": bandwidth,
        "weights": shared["weights"],
        "parameters": shared["parameters"],
        "sizes": sizes,
        "prompt_texts": (prompts["texts"] or [])[: max(sizes["batch"], sizes["agree_prompts"])],
        "runs": [],
    }
    results = report["runs"]
    runs = plan_runs(args)
    gguf_files = prepare_llama_cpp(args, shared) if any(r[0] == "llama_cpp" for r in runs) else {}
    for library, backend, dtype, load_only in runs:
        spec = dict(spec_base, library=library, backend=backend, dtype=dtype,
                    load_only=load_only)
        if load_only:
            spec["keras_gemma_preset"] = shared["keras_hub_preset"]
        label = f"{library}{' (.h5 load only)' if load_only else ''} / {backend} / {dtype}"
        if library == "llama_cpp":
            if isinstance(gguf_files, str):  # why llama.cpp cannot run
                log(f"skipping {label}: {gguf_files}")
                results.append({"library": library, "backend": backend, "dtype": dtype,
                                "dtype_label": llama_cpp_bench.label(dtype),
                                "status": "not available", "note": gguf_files})
                continue
            spec["gguf_file"] = gguf_files[dtype]
        log(f"running {label} ...")
        # llama.cpp's child imports no Keras; any backend name does for its env.
        result = run_child(spec, backend=backend if backend in ALL_BACKENDS else "jax",
                           timeout=args.timeout)
        result.update(library=library, backend=backend, dtype=dtype)
        if load_only:
            result["load_only"] = True
        if "decode_b1_tok_s" in result:
            log(f"  ok in {result['wall_s']:.0f} s: TTFT {result['ttft_s']:.2f} s, "
                f"prefill {result['prefill_tok_s']:.1f} tok/s, decode b1 "
                f"{result['decode_b1_tok_s']:.2f} tok/s, b{sizes['batch']} "
                f"{result['decode_bN_tok_s']:.2f} tok/s")
        else:
            log(f"  {result.get('status')}: {str(result.get('error') or result.get('note') or '')[-400:]}"
                + (f" (load {result['load_s']:.1f} s)" if "load_s" in result else ""))
        results.append(result)
        add_agreement(results, sizes)
        report["table"] = table(results, bandwidth["best"], sizes)
        report["ratios"] = ratios(results)
        out.write_text(json.dumps(report, indent=1))

    # The machine may be shared: measure again at the end, keep the best.
    again = measure_bandwidth()
    report["bandwidth_bytes_per_s_end"] = again
    if again["best"] > bandwidth["best"]:
        bandwidth = dict(again)
        report["bandwidth_bytes_per_s"]["best"] = again["best"]
        report["table"] = table(results, bandwidth["best"], sizes)
        out.write_text(json.dumps(report, indent=1))
    print()
    print(f"Machine: {report['machine'].get('cpu', '?')}, {report['machine']['cpus']} CPUs; "
          f"read bandwidth {bandwidth['best'] / 1e9:.1f} GB/s. Weights: {shared['weights']}.")
    print(f"Sizes: prefill {sizes['prefill']} tokens; decode {sizes['new']} new tokens after "
          f"{sizes['prompt']}-token prompts at batch 1 and {sizes['batch']}; greedy.")
    print()
    print(report.get("table", "(no runs)"))
    print()
    print("Agreement with keras_gemma float32 on the same backend (transformers: torch; "
          "llama.cpp: jax), "
          f"leading greedy tokens of {sizes['agree_new']} for {sizes['agree_prompts']} prompts:")
    for r in results:
        a = r.get("agreement")
        if a:
            print(f"  {r['library']}/{r['backend']}/{r['dtype']}: {a['leading_tokens_agree']} "
                  f"-> {a['prompts_agree_first_16']}/{a['prompts']} agree on the first 16")
    print()
    print("Headline ratios, keras_gemma / other as speed-ups (> 1: keras_gemma faster or smaller):")
    print(ratio_table(report.get("ratios", [])))
    print()
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
