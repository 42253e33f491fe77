"""``keras-gemma serve``, run for real and spoken to with the official client.

Two servers run as subprocesses on free localhost ports, both from a tiny
random preset (Gemma 2 layout: sliding-window and global layers, soft
caps) with this test's backend: a main one for the API (started once for
the module), and a short-lived one for the queue limit, a client hanging
up and SIGTERM. Answers are checked against ``GemmaCausalLM.generate`` run
in this process on each prompt alone. (test_serving_scheduler.py drives the
scheduler in-process.)
"""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import pytest
from conftest import TESTS_DIR
from tiny_models import TINY_CONFIGS
from tiny_models import random_weights

import keras_gemma
from keras_gemma import preset_io
from keras_gemma.chat import chat_template
from keras_gemma.checkpoints import assign_weights

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


CLI = Path(sys.executable).parent / "keras-gemma"
BACKEND = keras.config.backend()
API_KEY = "test-key-0123456789"
MODEL = "tiny"
# Waiting for a server to load, compile, or drain on a slow shared machine.
START_TIMEOUT = 300
# Small embeddings keep the random model's greedy continuations varied
# (large ones make it repeat one token, which would prove little).
EMBEDDING_SCALE = 0.02
# The short-lived server's context: a request that fills it outlasts its test
# (eager PyTorch decodes the tiny model ~20x slower than compiled JAX).
LONG_CONTEXT = 4096 if BACKEND == "torch" else 32768
DRAIN_TIMEOUT = 6


def tiny_model(config_name):
    config = TINY_CONFIGS[config_name]
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config, embedding_scale=EMBEDDING_SCALE),
                   "tiny_models")
    tokenizer = keras_gemma.GemmaTokenizer(str(TESTS_DIR / "data" / "test_vocabulary.spm"))
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer)
    return keras_gemma.GemmaCausalLM(backbone, preprocessor)


class Server:
    """``keras-gemma serve`` in a subprocess; its stderr lines collected."""

    def __init__(self, preset, *args):
        environment = dict(os.environ, KERAS_BACKEND=BACKEND, PYTHONIOENCODING="utf-8",
                           TF_CPP_MIN_LOG_LEVEL="3")
        self.process = subprocess.Popen(
            [str(CLI), "serve", "--preset", str(preset), "--model-name", MODEL,
             "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment, text=True,
        )
        self.lines = []
        self.port = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"serving \S+ on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    def wait_ready(self):
        assert self._ready.wait(START_TIMEOUT), "the server did not start in time"
        assert self.port is not None, "\n".join(self.lines)
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0,
                             timeout=120, **kwargs)

    def health(self):
        return httpx.get(self.url + "/health", timeout=30).json()

    def wait_for(self, condition, what, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.health()):
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}: {self.health()}")

    def wait_line(self, fragment, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.lines if fragment in line]
            if lines:
                return lines
            time.sleep(0.02)
        raise AssertionError(f"no line with {fragment!r}:\n" + "\n".join(self.lines))

    def request_lines(self):
        return [line for line in self.lines if " request " in line]

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    model = tiny_model("gemma2")
    path = tmp_path_factory.mktemp("serve") / "tiny_preset"
    preset_io.save_preset(path, backbone=model.backbone,
                          tokenizer=model.preprocessor.tokenizer)
    return path


@pytest.fixture(scope="module")
def servers(preset):
    """Both servers, started together so that they load and compile at once."""
    main = Server(preset, "--api-key", API_KEY, "--max-batch", "4", "--max-queue", "32",
                  "--context-length", "256")
    # The second one: 2 slots and 1 queue place, and a context long enough that a
    # request with a large max_tokens stays running for the whole test.
    short_lived = Server(preset, "--api-key", API_KEY, "--max-batch", "2",
                         "--max-queue", "1", "--context-length", str(LONG_CONTEXT),
                         "--drain-timeout", str(DRAIN_TIMEOUT))
    try:
        yield main.wait_ready(), short_lived.wait_ready()
    finally:
        main.close()
        short_lived.close()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def reference(preset):
    """``generate``'s greedy continuation of one prompt alone, and its tokens."""
    model = keras_gemma.GemmaCausalLM.from_preset(str(preset))
    tokenizer = model.preprocessor.tokenizer

    def continuation(prompt, max_tokens):
        prompt_tokens = len(tokenizer.tokenize(prompt)) + 1
        text = model.generate(prompt, max_length=prompt_tokens + max_tokens,
                              strip_prompt=True)
        return text, prompt_tokens

    continuation.model = model
    return continuation


PROMPTS = [
    "The quick brown fox",
    "Hello",
    "Once upon a time, in a land far away, there lived",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "A much longer prompt that runs on for a while, so that it takes more than one "
    "prefill chunk of thirty-two tokens, which is how prompts are written into a slot.",
    "Q: What is the capital of France?\nA:",
    "x",
]


# -- the command line ----------------------------------------------------------------


def test_serve_help_and_usage_errors():
    """Answered before Keras is imported: a fraction of a second each."""
    result = subprocess.run([str(CLI), "serve", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "keras-gemma serve --preset" in result.stdout
    assert "127.0.0.1" in result.stdout
    for args, fragment in ((["--port", "70000"], "at most 65535"),
                           (["--max-batch", "0"], "at least 1"),
                           (["--drain-timeout", "soon"], "expected a number")):
        result = subprocess.run([str(CLI), "serve", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and fragment in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# -- the API, one request at a time ------------------------------------------------


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = server.health()  # no key needed
    assert health["status"] == "ok" and health["slots"] == 4


def test_completion_equals_generate(client, reference):
    prompt = PROMPTS[0]
    expected, prompt_tokens = reference(prompt, 12)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                         temperature=0)
    choice = response.choices[0]
    assert choice.text == expected
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.total_tokens == prompt_tokens + response.usage.completion_tokens
    assert (choice.finish_reason == "length") == (response.usage.completion_tokens == 12)


def test_stop_string_cuts_the_text(client, reference):
    expected, _ = reference(PROMPTS[2], 20)
    stop = expected[5:8]
    assert len(stop) == 3 and stop.strip(), expected
    response = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=20,
                                         temperature=0, stop=[stop, "never appears"])
    assert response.choices[0].text == expected[: expected.index(stop)]
    assert response.choices[0].finish_reason == "stop"
    # Streamed, the text that might begin the stop string is held back, not sent.
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=PROMPTS[2], max_tokens=20, temperature=0, stop=stop,
        stream=True)]
    assert "".join(pieces) == expected[: expected.index(stop)]


def test_chat_equals_generate(client, reference):
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is a fox?"}]
    expected, prompt_tokens = reference(chat_template(messages), 10)
    response = client.chat.completions.create(model=MODEL, messages=messages,
                                              max_tokens=10, temperature=0)
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected
    assert response.usage.prompt_tokens == prompt_tokens


def test_streams_join_to_the_non_streamed_text(client):
    arguments = dict(model=MODEL, prompt=PROMPTS[3], max_tokens=24, temperature=0)
    whole = client.completions.create(**arguments).choices[0].text
    chunks = list(client.completions.create(
        **arguments, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1

    messages = [{"role": "user", "content": PROMPTS[6]}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                           temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages,
                                                 max_tokens=16, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


# -- many clients at once ------------------------------------------------------------


def test_concurrent_clients_get_what_generate_gives_each_alone(server, client, reference):
    """16 clients on 4 slots: requests join and leave the running batch (and
    reuse freed slots) while others decode, some of them sampling."""
    jobs = [(PROMPTS[i % len(PROMPTS)], 3 + (7 * i) % 29, i % 3 == 2) for i in range(16)]
    expected = [reference(prompt, max_tokens)[0] for prompt, max_tokens, _ in jobs]

    def ask(index):
        prompt, max_tokens, sample = jobs[index]
        extra = dict(temperature=0.9, seed=index, extra_body={"top_k": 8}) if sample else \
            dict(temperature=0)
        if index % 2:
            chunks = client.completions.create(model=MODEL, prompt=prompt,
                                               max_tokens=max_tokens, stream=True, **extra)
            return "".join(c.choices[0].text for c in chunks)
        return client.completions.create(model=MODEL, prompt=prompt,
                                         max_tokens=max_tokens, **extra).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    for (prompt, max_tokens, sample), answer, greedy in zip(jobs, answers, expected):
        if not sample:
            assert answer == greedy, (prompt, max_tokens)
    # A seeded request samples the same text whatever runs beside it.
    for index, (_, _, sample) in enumerate(jobs):
        if sample:
            assert ask(index) == answers[index]
    log = server.request_lines()
    assert sum("POST /v1/completions 200" in line for line in log) >= 16
    assert all(re.search(r"prompt_tokens=\d+ completion_tokens=\d+ ttft=\S+s "
                         r"tokens/s=\S+", line)
               for line in log if "POST /v1/completions 200" in line)


# -- authentication and bad requests ---------------------------------------------------


def test_api_key_is_required_except_for_health(server):
    for key in ("wrong-key", API_KEY[:-1], API_KEY + "0"):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as error:
            client.models.list()
        assert error.value.status_code == 401
        assert error.value.body["code"] == "invalid_api_key"
    response = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert response.status_code == 401 and "Authorization: Bearer" in response.text
    assert httpx.get(server.url + "/health").status_code == 200


def chat(**fields):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


def completion(**fields):
    return {"model": MODEL, "prompt": "Hi", **fields}


LONG_PROMPT = "word " * 400  # more than the main server's 256-token context


@pytest.mark.parametrize("path,body,status,fragments", [
    ("completions", b'{"model": "tiny", "prompt": ', 400, ["not valid JSON"]),
    ("completions", b'["tiny"]', 400, ["JSON object", "array"]),
    ("completions", {"prompt": "Hi"}, 400, ["required field `model`"]),
    ("completions", completion(model=7), 400, ["`model` must be a string"]),
    ("completions", completion(model="gpt-4"), 404, ["`gpt-4` does not exist", "`tiny`"]),
    ("completions", {"model": MODEL}, 400, ["required field `prompt`"]),
    ("completions", completion(prompt=12), 400, ["`prompt` must be"]),
    ("completions", completion(prompt=[1, 2, 3]), 400, ["token-id prompts"]),
    ("completions", completion(max_tokens=0), 400, ["`max_tokens` must be at least 1"]),
    ("completions", completion(max_tokens="5"), 400, ["`max_tokens` must be an integer"]),
    ("completions", completion(temperature=2.5), 400, ["`temperature` must lie in [0, 2]"]),
    ("completions", completion(temperature=-0.1), 400, ["`temperature`"]),
    ("completions", completion(top_p=1.5), 400, ["`top_p` must lie in [0, 1]"]),
    ("completions", completion(top_p="high"), 400, ["`top_p` must be a number"]),
    ("completions", completion(stream="yes"), 400, ["`stream` must be true or false"]),
    ("completions", completion(n=2), 400, ["`n`=2 is not supported"]),
    ("completions", completion(prompt=LONG_PROMPT), 400,
     ["maximum context length is 256", "prompt alone is", "at most 255"]),
    ("completions", completion(prompt="Hi", max_tokens=300), 400,
     ["maximum context length is 256", "300 for the completion",
      "Lower `max_tokens` to at most"]),
    ("chat/completions", {"model": MODEL, "messages": "Hi"}, 400, ["`messages` must be"]),
    ("chat/completions", {"model": MODEL, "messages": []}, 400, ["`messages` is empty"]),
    ("chat/completions", {"model": MODEL, "messages": ["Hi"]}, 400, ["`messages[0]` must be"]),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400,
     ["`messages[0]` lacks `content`"]),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400,
     ["`messages[0].content` must be a string"]),
    ("chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
     400, ["unknown role 'wizard'"]),
    ("chat/completions", chat(messages=[{"role": "user", "content": LONG_PROMPT}]), 400,
     ["maximum context length is 256"]),
    ("chat/completions", chat(temperature=True), 400, ["`temperature` must be a number"]),
    ("nowhere", completion(), 404, ["Not Found"]),
])
def test_bad_requests_get_openai_errors(server, client, path, body, status, fragments):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/{path}", content=content, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}",
                                   "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    # ... and the server goes on serving.
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices


def test_the_official_client_raises_on_bad_requests(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="Hi")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, max_tokens=0,
                                       messages=[{"role": "user", "content": "Hi"}])


# -- the queue limit, a client hanging up, SIGTERM -------------------------------------


def stream_reader(server, max_tokens, prompt="The quick brown fox"):
    """Starts a streamed completion in a thread; returns (first chunk event,
    results dict, thread, response holder)."""
    started, results, holder = threading.Event(), {"pieces": [], "error": None}, {}

    def read():
        try:
            stream = server.client().completions.create(
                model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True)
            holder["stream"] = stream
            for chunk in stream:
                results["pieces"].append(chunk.choices[0].text)
                results["finish"] = chunk.choices[0].finish_reason
                started.set()
        except Exception as error:  # the server cut it, or we closed it
            results["error"] = error
        finally:
            started.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return started, results, thread, holder


def test_queue_limit_hang_up_and_sigterm(servers, reference):
    server = servers[1]
    endless = LONG_CONTEXT - 100  # tokens: far longer than this test
    a_started, a, a_thread, _ = stream_reader(server, endless)
    b_started, b, b_thread, b_holder = stream_reader(server, endless)
    assert a_started.wait(START_TIMEOUT) and b_started.wait(START_TIMEOUT)
    assert a["error"] is None and b["error"] is None
    server.wait_for(lambda h: h["active"] == 2, "both slots busy")

    # C waits for a slot (the one queue place); D finds the queue full: 429 at once.
    c_result = queue.Queue()
    threading.Thread(target=lambda: c_result.put(server.client().completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=6, temperature=0)), daemon=True).start()
    server.wait_for(lambda h: h["queued"] == 1, "C queued")
    began = time.monotonic()
    with pytest.raises(openai.RateLimitError) as error:
        server.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert error.value.status_code == 429 and time.monotonic() - began < 10
    assert c_result.empty()

    # B hangs up mid-stream: its request is cancelled and C gets its slot, while
    # A (still running) would have kept it busy for much longer.
    b_holder["stream"].close()
    response = c_result.get(timeout=60)
    assert response.choices[0].text == reference(PROMPTS[1], 6)[0]
    assert a_thread.is_alive() and not a["error"]
    server.wait_for(lambda h: h["active"] == 1 and h["queued"] == 0, "B's slot freed")
    b_line = server.wait_line("finish=cancelled")
    assert len(b_line) == 1, server.request_lines()
    assert int(re.search(r"completion_tokens=(\d+)", b_line[0]).group(1)) < endless

    # E starts, then SIGTERM: E finishes whole; A, endless, is cut after the
    # drain timeout; new connections are refused; the exit status is 0.
    e_started, e, e_thread, _ = stream_reader(server, 12, prompt=PROMPTS[3])
    assert e_started.wait(60)
    server.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    e_thread.join(60)
    assert e["error"] is None and e["finish"] in ("stop", "length")
    assert "".join(e["pieces"]) == reference(PROMPTS[3], 12)[0]
    with pytest.raises(httpx.TransportError):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            httpx.get(server.url + "/health", timeout=2)
            time.sleep(0.05)
    assert server.process.wait(timeout=60) == 0
    assert time.monotonic() - sent < DRAIN_TIMEOUT + 60  # generous: the machine may be busy
    a_thread.join(30)
    assert not a_thread.is_alive() and a.get("finish") != "length"
    assert "shutting down" in str(a["error"])  # told why, not just cut off
    assert any("draining" in line for line in server.lines)
    assert "Traceback" not in "\n".join(server.lines), "\n".join(server.lines)
