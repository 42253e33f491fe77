"""keras_gemma models for EleutherAI's lm-evaluation-harness (``lm-eval``).

``LMEvalModel`` is an ``lm_eval.api.model.LM``: every lm-eval task (MMLU,
HellaSwag, ARC, GSM8K, ...) runs on a keras_gemma model, on any backend,
wherever the task's data is available. Needs ``pip install
'keras-gemma[eval]'``.

Example:

```python
import lm_eval
from keras_gemma.evaluation import LMEvalModel

lm = LMEvalModel(preset="gemma3_270m", backend="jax", batch_size=8)
lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"], limit=100)["results"]
```
"""

import os

try:
    from lm_eval.api.model import LM
    from lm_eval import utils as lm_eval_utils
except ImportError as error:  # pragma: no cover - depends on the extra
    raise ImportError(
        "The lm-eval adapter needs EleutherAI's lm-evaluation-harness: "
        "pip install 'keras-gemma[eval]' (or pip install lm-eval)."
    ) from error

from keras_gemma.evaluation import generative
from keras_gemma.evaluation import multiple_choice

# Rolling log-likelihood (perplexity tasks) scores texts in windows of at
# most this many tokens unless ``max_length`` says otherwise.
DEFAULT_MAX_LENGTH = 1024
DEFAULT_MAX_GEN_TOKS = 256


def _choose_backend(backend):
    if backend is None:
        return
    import sys

    if "keras" in sys.modules:
        import keras

        if keras.config.backend() != backend:
            raise ValueError(
                f"backend={backend!r} was asked for, but Keras is already running on "
                f"{keras.config.backend()!r}; set KERAS_BACKEND={backend} before "
                "importing keras (or keras_gemma's models)."
            )
        return
    os.environ["KERAS_BACKEND"] = backend


class LMEvalModel(LM):
    """A keras_gemma ``GemmaCausalLM`` as an lm-eval model.

    Args:
        preset: preset name, directory or checkpoint file to load; or
        model: an already built ``GemmaCausalLM`` (then ``preset``,
            ``dtype``, ``quantize`` and ``adapter`` are not used).
        backend: ``"jax"``, ``"tensorflow"`` or ``"torch"`` (must be chosen
            before Keras is first imported).
        batch_size: sequences scored or generated at once.
        max_length: window of ``loglikelihood_rolling`` (default 1024).
        dtype, quantize: as in ``GemmaCausalLM.from_preset``.
        adapter: a LoRA adapter file (``.lora.h5``) to apply.
        max_gen_toks: default cap on generated tokens.
    """

    def __init__(self, preset=None, backend=None, model=None, batch_size=8, max_length=None,
                 dtype=None, quantize=None, adapter=None, max_gen_toks=DEFAULT_MAX_GEN_TOKS):
        super().__init__()
        if (preset is None) == (model is None):
            raise ValueError("LMEvalModel needs exactly one of `preset` or `model`.")
        _choose_backend(backend)
        if model is None:
            from keras_gemma.causal_lm import GemmaCausalLM

            kwargs = {k: v for k, v in (("dtype", dtype), ("quantize", quantize)) if v}
            model = GemmaCausalLM.from_preset(preset, **kwargs)
            if adapter:
                model.backbone.load_lora_weights(adapter)
        if model.preprocessor is None:
            raise ValueError("LMEvalModel needs a model with a preprocessor (a tokenizer).")
        self.model = model
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or min(DEFAULT_MAX_LENGTH, model.preprocessor.sequence_length))
        self.max_gen_toks = int(max_gen_toks)
        self.scorer = multiple_choice.LoglikelihoodScorer(model, self.batch_size)

    @property
    def tokenizer(self):
        return self.model.preprocessor.tokenizer

    @property
    def tokenizer_name(self):
        return "keras_gemma"

    def loglikelihood(self, requests, disable_tqdm=False):
        pairs = [request.args for request in requests]
        results = multiple_choice.loglikelihoods(
            self.model, pairs, scorer=self.scorer, description="lm-eval loglikelihood"
        )
        for (context, continuation), result in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        windows, owners = [], []
        for number, request in enumerate(requests):
            (text,) = request.args
            ids = [int(i) for i in self.tokenizer.tokenize([text])[0]]
            for window in lm_eval_utils.get_rolling_token_windows(
                ids, self.tokenizer.bos_token_id, self.max_length, context_len=1
            ):
                windows.append(lm_eval_utils.make_disjoint_window(window))
                owners.append(number)
        scores = self.scorer.score_tokens(windows, "lm-eval rolling") if windows else []
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm=False):
        groups = {}
        for number, request in enumerate(requests):
            context, options = request.args
            options = dict(options or {})
            until = options.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.pop("max_gen_toks", self.max_gen_toks))
            sample = bool(options.pop("do_sample", False)) and float(options.get("temperature", 1.0)) > 0
            temperature = float(options.pop("temperature", 0.0) or 1.0)
            key = (tuple(until), max_new, sample, temperature if sample else None)
            groups.setdefault(key, []).append((number, context))
        outputs = [None] * len(requests)
        for (until, max_new, sample, temperature), members in groups.items():
            sampler = None
            if sample:
                from keras_gemma import samplers

                sampler = samplers.RandomSampler(temperature=temperature)
            texts = generative.generate_until(
                self.model, [c for _, c in members], until, max_new_tokens=max_new,
                batch_size=self.batch_size, sampler=sampler, seed=0,
                description="lm-eval generate",
            )
            for (number, context), text in zip(members, texts):
                outputs[number] = text
                self.cache_hook.add_partial("generate_until", (context, {"until": list(until)}), text)
        return outputs


def simple_evaluate(lm, tasks, limit=None, num_fewshot=None, **kwargs):
    """``lm_eval.simple_evaluate`` on ``lm``; a task may be a YAML file path
    (its folder is then added to lm-eval's task search path)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names, include = [], []
    for task in tasks:
        if task.endswith((".yaml", ".yml")) and os.path.isfile(os.path.expanduser(task)):
            import yaml

            path = os.path.abspath(os.path.expanduser(task))
            with open(path) as f:
                names.append(yaml.safe_load(f)["task"])
            include.append(os.path.dirname(path))
        else:
            names.append(task)
    manager = TaskManager(include_path=include or None)
    return lm_eval.simple_evaluate(
        model=lm, tasks=names, limit=limit, num_fewshot=num_fewshot, task_manager=manager,
        **kwargs,
    )
