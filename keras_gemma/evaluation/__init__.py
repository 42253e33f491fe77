"""Evaluation of Gemma models: multiple choice by log-likelihood, generative
tasks, HumanEval in a sandbox, and an adapter for EleutherAI's lm-eval.

A leaf of keras_gemma: it uses ``GemmaCausalLM.score``/``generate`` and the
tokenizer; nothing in the core imports it. ``LMEvalModel`` needs the
``lm-eval`` package (``pip install 'keras-gemma[eval]'``) and is imported on
first use.
"""

import importlib

_EXPORTS = {
    "LMEvalModel": "keras_gemma.evaluation.lm_eval_adapter",
    "Task": "keras_gemma.evaluation.tasks",
    "load_task": "keras_gemma.evaluation.tasks",
    "evaluate_task": "keras_gemma.evaluation.tasks",
    "loglikelihoods": "keras_gemma.evaluation.multiple_choice",
    "generate_until": "keras_gemma.evaluation.generative",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_gemma.evaluation' has no attribute {name!r}")
