"""Tasks as data: a small description file names a data file, a prompt
template, the choices or stop strings, the answer and the metrics.

A task file is JSON (or YAML, if PyYAML is installed) such as::

    {
      "name": "capitals",
      "type": "multiple_choice",          # or "generate"
      "data": "capitals.jsonl",           # one JSON object per line, relative
                                          # to the task file
      "fewshot_data": "capitals_shots.jsonl",  # optional; default: "data"
                                          # (an item is never its own shot)
      "prompt": "Q: What is the capital of {country}?\\nA:",
      "choices": "{options}",             # a field holding a list, or a list
                                          # of templates
      "answer": "{label}",                # index of the right choice, or
                                          # (generate) the reference text
      "metrics": ["acc", "acc_norm"],
      "num_fewshot": 0,
      "seed": 1234                        # which shots each item gets
    }

Templates are Python format strings over an item's fields. Generative
tasks take ``stop`` (stop strings), ``max_new_tokens``, ``metrics`` among
``exact_match`` and ``numeric_match`` (GSM8K-style: ``#### 42`` or ``The
answer is 42``), and ``samples`` with ``temperature`` for maj@k.

Example:

```python
import keras_gemma
from keras_gemma.evaluation import tasks

gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
task = tasks.load_task(tasks.bundled("capitals"))
tasks.evaluate_task(gemma, task, num_fewshot=3)["metrics"]
# {'acc': ..., 'acc_norm': ..., 'items': 24}
```
"""

import dataclasses
import json
import os
import random
import string

import numpy as np

from keras_gemma.evaluation import generative
from keras_gemma.evaluation import multiple_choice

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TASK_TYPES = ("multiple_choice", "generate")
METRICS = {"multiple_choice": ("acc", "acc_norm"), "generate": ("exact_match", "numeric_match")}


@dataclasses.dataclass
class Task:
    """One task: its items, how to render them and how to score them."""

    name: str
    type: str
    items: list
    prompt: str
    answer: str
    choices: object = None
    metrics: tuple = ()
    fewshot_items: list = None
    num_fewshot: int = 0
    seed: int = 1234
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    stop: tuple = ("\n\n",)
    max_new_tokens: int = 64
    samples: int = 1
    temperature: float = 0.7

    def __post_init__(self):
        if self.type not in TASK_TYPES:
            raise ValueError(f"Task {self.name!r}: type must be one of {TASK_TYPES}, got {self.type!r}.")
        if self.type == "multiple_choice" and self.choices is None:
            raise ValueError(f"Task {self.name!r}: a multiple_choice task needs 'choices'.")
        self.metrics = tuple(self.metrics or METRICS[self.type][:1])
        unknown = [m for m in self.metrics if m not in METRICS[self.type]]
        if unknown:
            raise ValueError(
                f"Task {self.name!r}: unknown metric {unknown[0]!r} for a {self.type} "
                f"task; choose from {METRICS[self.type]}."
            )
        if not self.items:
            raise ValueError(f"Task {self.name!r} has no items.")
        for field in ("prompt", "answer"):
            _check_template(self, getattr(self, field), self.items[0], field)

    # -- rendering ---------------------------------------------------------

    def text(self, item):
        return _fill(self.prompt, item)

    def choice_texts(self, item):
        if isinstance(self.choices, str):
            field = _single_field(self.choices)
            if field is not None and isinstance(item.get(field), list):
                return [str(c) for c in item[field]]
            raise ValueError(
                f"Task {self.name!r}: 'choices' {self.choices!r} must name a field "
                "holding a list, or be a list of templates."
            )
        return [_fill(c, item) for c in self.choices]

    def target(self, item):
        """The right answer's text (a choice's text for multiple choice)."""
        if self.type == "multiple_choice":
            return self.choice_texts(item)[self.answer_index(item)]
        return _fill(self.answer, item)

    def answer_index(self, item):
        value = _fill(self.answer, item)
        choices = self.choice_texts(item)
        if value.lstrip("-").isdigit() and 0 <= int(value) < len(choices):
            return int(value)
        if value in choices:
            return choices.index(value)
        raise ValueError(
            f"Task {self.name!r}: answer {value!r} is neither a choice index below "
            f"{len(choices)} nor one of the choices {choices}."
        )

    def context(self, index, num_fewshot=None):
        """Prompt of item ``index`` after its shots (same shots every run)."""
        k = self.num_fewshot if num_fewshot is None else num_fewshot
        shots = self._shots(index, k)
        parts = [self.text(s) + self.target_delimiter + self.target(s) for s in shots]
        return self.description + "".join(p + self.fewshot_delimiter for p in parts) + self.text(
            self.items[index]
        )

    def _shots(self, index, k):
        if not k:
            return []
        separate = self.fewshot_items is not None
        pool = self.fewshot_items if separate else self.items
        candidates = list(range(len(pool))) if separate else [i for i in range(len(pool)) if i != index]
        if k > len(candidates):
            raise ValueError(
                f"Task {self.name!r}: {k} shots asked but the few-shot pool has only "
                f"{len(candidates)} other items."
            )
        # One generator per item, so an item's shots do not depend on which
        # other items are evaluated (--limit).
        rng = random.Random(f"{self.seed}/{index}")
        return [pool[i] for i in rng.sample(candidates, k)]


def _fill(template, item):
    try:
        return string.Formatter().vformat(template, (), item)
    except (KeyError, IndexError) as error:
        raise ValueError(
            f"Template {template!r} names the field {error}, which the item "
            f"does not have (fields: {sorted(item)})."
        ) from None


def _single_field(template):
    parsed = list(string.Formatter().parse(template))
    if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] and not parsed[0][3]:
        return parsed[0][1]
    return None


def _check_template(task, template, item, what):
    if not isinstance(template, str):
        raise ValueError(f"Task {task.name!r}: {what!r} must be a template string, got {template!r}.")
    _fill(template, item)


# -- loading -------------------------------------------------------------------


def read_jsonl(path):
    items = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except ValueError as error:
                    raise ValueError(f"{path}, line {number}: not JSON ({error}).") from None
    return items


def load_task(path):
    """A ``Task`` from a JSON or YAML description file."""
    path = os.path.expanduser(path)
    with open(path) as f:
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError as error:
                raise ImportError("YAML task files need PyYAML: pip install pyyaml.") from error
            spec = yaml.safe_load(f)
        else:
            spec = json.load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a task file holds one mapping, got {type(spec).__name__}.")
    spec = dict(spec)
    missing = [key for key in ("name", "type", "data", "prompt", "answer") if key not in spec]
    if missing:
        raise ValueError(f"{path}: the task description lacks {', '.join(map(repr, missing))}.")
    here = os.path.dirname(os.path.abspath(path))
    spec["items"] = read_jsonl(os.path.join(here, spec.pop("data")))
    if "fewshot_data" in spec:
        spec["fewshot_items"] = read_jsonl(os.path.join(here, spec.pop("fewshot_data")))
    for key in ("stop", "metrics"):
        if key in spec:
            spec[key] = tuple(spec[key])
    fields = {f.name for f in dataclasses.fields(Task)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown task keys {unknown}; known: {sorted(fields)}.")
    return Task(**spec)


def bundled(name):
    """Path of a task description that ships with keras_gemma."""
    path = os.path.join(DATA_DIR, f"{name}.json")
    if not os.path.exists(path):
        known = sorted(f[:-5] for f in os.listdir(DATA_DIR) if f.endswith(".json"))
        raise ValueError(f"No bundled task {name!r}; bundled: {known}.")
    return path


# -- evaluating ----------------------------------------------------------------


def evaluate_task(model, task, limit=None, num_fewshot=None, batch_size=8,
                  max_new_tokens=None, scorer=None, seed=0):
    """Scores ``model`` on ``task``; returns ``{"metrics": ..., "details": [...]}``."""
    indices = list(range(len(task.items)))[:limit]
    contexts = [task.context(i, num_fewshot) for i in indices]
    if task.type == "multiple_choice":
        return _evaluate_multiple_choice(model, task, indices, contexts, batch_size, scorer)
    return _evaluate_generation(model, task, indices, contexts, batch_size,
                                max_new_tokens or task.max_new_tokens, seed)


def _evaluate_multiple_choice(model, task, indices, contexts, batch_size, scorer):
    requests, spans = [], []
    for index, context in zip(indices, contexts):
        choices = task.choice_texts(task.items[index])
        spans.append((len(requests), len(choices)))
        requests += [(context, task.target_delimiter + c) for c in choices]
    scores = multiple_choice.loglikelihoods(
        model, requests, batch_size=batch_size, scorer=scorer, description=task.name
    )
    details, correct = [], {"acc": [], "acc_norm": []}
    for index, (start, count) in zip(indices, spans):
        item = task.items[index]
        logprobs = [scores[start + j][0] for j in range(count)]
        pick, pick_norm = multiple_choice.choose(logprobs, task.choice_texts(item))
        gold = task.answer_index(item)
        correct["acc"].append(pick == gold)
        correct["acc_norm"].append(pick_norm == gold)
        details.append({"index": index, "logprobs": logprobs, "answer": gold,
                        "pick": pick, "pick_norm": pick_norm})
    metrics = {m: float(np.mean(correct[m])) for m in task.metrics}
    return {"metrics": {**metrics, "items": len(indices)}, "details": details}


def _evaluate_generation(model, task, indices, contexts, batch_size, max_new_tokens, seed):
    samples = task.samples
    sampler = None
    if samples > 1:
        from keras_gemma import samplers

        sampler = samplers.RandomSampler(temperature=task.temperature)
    prompts = [c for c in contexts for _ in range(samples)]
    outputs = generative.generate_until(
        model, prompts, task.stop, max_new_tokens=max_new_tokens,
        batch_size=batch_size, sampler=sampler, seed=seed, description=task.name,
    )
    details, scores = [], {m: [] for m in task.metrics}
    for n, index in enumerate(indices):
        reference = task.target(task.items[index])
        answers = outputs[n * samples:(n + 1) * samples]
        if "exact_match" in scores:
            voted = generative.majority_vote([a.strip() for a in answers])
            scores["exact_match"].append(generative.exact_match(voted or "", reference))
        if "numeric_match" in scores:
            voted = generative.majority_vote([generative.extract_number(a) for a in answers])
            scores["numeric_match"].append(float(
                voted is not None and voted == generative.extract_number(reference)))
        details.append({"index": index, "outputs": answers, "reference": reference})
    suffix = f"_maj@{samples}" if samples > 1 else ""
    metrics = {m + suffix: float(np.mean(v)) for m, v in scores.items()}
    return {"metrics": {**metrics, "items": len(indices)}, "details": details}
