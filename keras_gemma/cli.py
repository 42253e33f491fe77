"""The ``keras-gemma`` command (also ``python -m keras_gemma``).

    keras-gemma generate "The capital of France is" --max-new-tokens 30
    keras-gemma presets
"""

import argparse
import os
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-gemma",
        description="Gemma language models on Keras 3 (JAX, TensorFlow, PyTorch).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate",
        help="continue a prompt",
        description="Continue a prompt with a Gemma model.",
        epilog='example: keras-gemma generate "The capital of France is" '
        "--max-new-tokens 30 --backend jax",
    )
    generate.add_argument("prompt")
    generate.add_argument("--preset", default="gemma3_270m",
                          help="preset name, preset directory, HF folder or .gguf file "
                          "(default: gemma3_270m)")
    generate.add_argument("--backend", choices=BACKENDS,
                          help="Keras backend (default: $KERAS_BACKEND or jax)")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--sampler", choices=("greedy", "top_k", "top_p", "random"),
                          default="greedy")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=50)
    generate.add_argument("--top-p", type=float, default=0.9)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--dtype", default=None,
                          help="weights dtype policy: float32, bfloat16, mixed_bfloat16")

    commands.add_parser(
        "presets", help="list known presets",
        description="List the known presets and whether their files are here.",
        epilog="example: keras-gemma presets",
    )
    return parser


def _fail(message):
    print(f"keras-gemma: error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    args = _parser().parse_args(argv)
    if getattr(args, "backend", None):
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import keras_gemma
    except (ValueError, ImportError) as error:
        return _fail(str(error))
    try:
        if args.command == "presets":
            return _presets(keras_gemma)
        return _generate(keras_gemma, args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130


def _presets(keras_gemma):
    from keras_gemma import preset_io

    print(f"{'name':28} {'family':7} {'parameters':>15}  files here")
    for name in keras_gemma.list_presets():
        info = keras_gemma.preset_info(name)
        try:
            here = preset_io.resolve(name, need_files=False) is not None
        except (FileNotFoundError, ValueError):
            here = False
        print(f"{name:28} {info['family']:7} {info['parameters']:>15,}  "
              f"{'yes' if here else 'no'}")
    return 0


def _generate(keras_gemma, args):
    if args.max_new_tokens < 1:
        return _fail("--max-new-tokens must be at least 1.")
    samplers = keras_gemma.samplers
    sampler = {
        "greedy": lambda: samplers.GreedySampler(),
        "top_k": lambda: samplers.TopKSampler(k=args.top_k, temperature=args.temperature),
        "top_p": lambda: samplers.TopPSampler(p=args.top_p, temperature=args.temperature),
        "random": lambda: samplers.RandomSampler(temperature=args.temperature),
    }[args.sampler]()
    model = keras_gemma.GemmaCausalLM.from_preset(args.preset, dtype=args.dtype)
    model.compile(sampler=sampler)
    tokenizer = model.preprocessor.tokenizer
    prompt_length = len(tokenizer.tokenize(args.prompt)) + 1
    max_length = prompt_length + args.max_new_tokens
    start = time.perf_counter()
    text = model.generate(args.prompt, max_length=max_length, seed=args.seed)
    elapsed = time.perf_counter() - start
    print(text)
    new_tokens = len(tokenizer.tokenize(text)) + 1 - prompt_length
    print(f"[{new_tokens} tokens in {elapsed:.1f} s, {new_tokens / elapsed:.1f} tokens/s, "
          f"backend {os.environ['KERAS_BACKEND']}, compilation included]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
