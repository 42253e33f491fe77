"""The continuous-batching scheduler, driven in-process (no HTTP).

A tiny random Gemma 3 layout (local and global layers, two RoPE bases, RoPE
scaling) on 3 slots: requests of different lengths join and leave the batch
and reuse slots, every sampler runs beside greedy requests, and each answer
is checked against ``GemmaCausalLM.generate`` on that prompt alone (with the
matching sampler and seed). Also: nothing recompiles, the ASGI app over a
scheduler (the Python API), and a bounded stop.
"""

import queue
import time

import keras
import numpy as np
import pytest
from test_serving import PROMPTS
from test_serving import tiny_model

from keras_gemma import samplers
from keras_gemma.serving import GenerationRequest
from keras_gemma.serving import NotAccepting
from keras_gemma.serving import QueueFull
from keras_gemma.serving import Scheduler

BACKEND = keras.config.backend()

@pytest.fixture(scope="module")
def gemma3():
    return tiny_model("gemma3")


@pytest.fixture(scope="module")
def scheduler(gemma3):
    """3 slots, no queue; the last test stops it."""
    scheduler = Scheduler(gemma3, max_batch=3, max_queue=0, context_length=4096)
    scheduler.start()
    scheduler.traces_after_start = dict(scheduler.engine.traces)
    yield scheduler
    scheduler.stop(timeout=0)


def run_all(scheduler, requests):
    """Submits requests as slots free up; returns their texts."""
    done = queue.Queue()
    for request in requests:
        request.on_event = lambda event, r=request: done.put(r) if event[0] != "text" else None
    pending, finished = list(requests), 0
    while finished < len(requests):
        while pending:
            try:
                scheduler.submit(pending[0])
            except QueueFull:
                break
            pending.pop(0)
        done.get(timeout=120)
        finished += 1
    return [r.text for r in requests]


def prompt_ids(model, prompt):
    return [model.preprocessor.tokenizer.bos_token_id] + model.preprocessor.tokenizer.tokenize(prompt)


def test_scheduler_reuses_slots_and_matches_generate(gemma3, scheduler):
    """Gemma 3 layout: local and global layers, two RoPE bases, scaling."""
    lengths = [5, 17, 3, 40, 9, 22]
    prompts = PROMPTS[: len(lengths)]
    texts = run_all(scheduler, [GenerationRequest(prompt_ids(gemma3, p), n)
                                for p, n in zip(prompts, lengths)])
    for prompt, n, text in zip(prompts, lengths, texts):
        total = len(prompt_ids(gemma3, prompt)) + n
        assert text == gemma3.generate(prompt, max_length=total, strip_prompt=True)


SAMPLERS = [
    (samplers.TopKSampler(k=5, temperature=0.8), dict(temperature=0.8, top_k=5)),
    (samplers.TopPSampler(p=0.7, temperature=1.3), dict(temperature=1.3, top_p=0.7)),
    (samplers.RandomSampler(temperature=1.0), dict(temperature=1.0)),
]


def test_seeded_sampling_matches_generate_with_that_sampler(gemma3, scheduler):
    """Samplers of every kind and a greedy request decode in one batch; each
    seeded request draws what generate draws with that sampler and seed."""
    jobs = [(PROMPTS[seed % 4], sampler, settings, seed)
            for seed, (sampler, settings) in enumerate(SAMPLERS * 2)]
    requests = [GenerationRequest(prompt_ids(gemma3, p), 12, seed=seed, **settings)
                for p, _, settings, seed in jobs]
    requests.append(GenerationRequest(prompt_ids(gemma3, "Hi"), 12))
    texts = run_all(scheduler, requests)
    try:
        for (prompt, sampler, _, seed), text in sorted(
                zip(jobs, texts), key=lambda job: SAMPLERS.index(job[0][1:3])):
            if gemma3.sampler is not sampler:
                gemma3.compile(sampler=sampler)  # recompiles generate: once per sampler
            total = len(prompt_ids(gemma3, prompt)) + 12
            assert text == gemma3.generate(prompt, max_length=total, strip_prompt=True,
                                           seed=seed), (sampler, seed)
    finally:
        gemma3.compile(sampler="greedy")


def test_python_api_app_in_process(gemma3, scheduler):
    """``create_app`` over a running Scheduler, called through Starlette's
    test client: the Python API without a subprocess."""
    from fastapi.testclient import TestClient

    from keras_gemma import serving

    with TestClient(serving.create_app(scheduler, "tiny3", api_key="k")) as http:
        assert http.get("/health").json()["slots"] == 3
        assert http.get("/v1/models").status_code == 401
        response = http.post("/v1/completions", headers={"Authorization": "Bearer k"},
                             json={"model": "tiny3", "prompt": PROMPTS[1], "max_tokens": 7,
                                   "temperature": 0})
    total = len(prompt_ids(gemma3, PROMPTS[1])) + 7
    assert response.json()["choices"][0]["text"] == gemma3.generate(
        PROMPTS[1], max_length=total, strip_prompt=True)


@pytest.mark.skipif(BACKEND == "torch", reason="eager PyTorch compiles nothing")
def test_no_request_mix_recompiled(scheduler):
    """The requests above (lengths from 3 to 60 tokens, every sampler, seeds,
    slots joining and leaving) all ran the programs compiled at start."""
    assert scheduler.engine.traces == scheduler.traces_after_start


def test_scheduler_stop_is_bounded(scheduler):
    events = queue.Queue()
    request = GenerationRequest([2, 5, 6], 4000, on_event=events.put)
    scheduler.submit(request)
    while request.first_token_at is None:
        time.sleep(0.01)
    began = time.monotonic()
    scheduler.stop(timeout=0.3)
    assert time.monotonic() - began < 10
    assert request.finish_reason == "cancelled" and request.completion_tokens < 4000
    with pytest.raises(NotAccepting, match="shutting down"):
        scheduler.submit(GenerationRequest([2, 5], 3))
    assert np.isfinite(request.time_to_first_token())
