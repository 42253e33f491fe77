"""Writes tests/data/gemma4_chat_oracle.json: Gemma 4's official chat template,
rendered on the conversations tests/test_gemma4_chat.py checks.

Gemma 4's template differs by model size: E2B/E4B end the generation prompt at
``<|turn>model\\n``; 26B-A4B and 31B add an empty thought channel
(``<|channel>thought\\n<channel|>``) when thinking is off. Download both
``chat_template.jinja`` files (e.g. from google/gemma-4-E2B-it and
google/gemma-4-31B-it; the expected strings were made with the revision
"Published: 2026-07-09" that ollama keeps as test data,
model/renderers/testdata/gemma4_{e2b,31b}_chat_template.jinja2 at ollama
commit fb3076099), then run from the repository root:

    python tests/data/make_gemma4_chat_oracle.py SMALL.jinja LARGE.jinja

The templates are rendered with jinja2 set up as transformers'
``apply_chat_template`` does (sandboxed, trim_blocks, lstrip_blocks,
loopcontrols); ``bos_token`` is "<bos>", which is cut from the front of each
result because keras_gemma's ``chat_template`` leaves it to ``generate``.
"""

import json
import pathlib
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

OUTPUT = pathlib.Path(__file__).resolve().parent / "gemma4_chat_oracle.json"

USER = {"role": "user", "content": "knock knock"}
CASES = {
    "single_user": dict(messages=[USER]),
    "system": dict(messages=[{"role": "system", "content": "You are terse."}, USER]),
    "multi_turn": dict(messages=[
        USER, {"role": "assistant", "content": "who is there"},
        {"role": "user", "content": "Gemma"},
    ]),
    "system_multi_turn": dict(messages=[
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"}, {"role": "model", "content": "Bonjour"},
        {"role": "user", "content": "Bye"},
    ]),
    "whitespace_trimmed": dict(messages=[
        {"role": "system", "content": "  padded system \n"},
        {"role": "user", "content": "\n  question with spaces  \n"},
        {"role": "assistant", "content": "  answer\n\n"},
        {"role": "user", "content": "\tnext\t"},
    ]),
    "thinking_stripped_from_history": dict(messages=[
        {"role": "user", "content": "2+2?"},
        {"role": "assistant",
         "content": "<|channel>thought\nsimple sum<channel|>It is 4."},
        {"role": "user", "content": "And 3+3?"},
    ]),
    "finished_conversation": dict(
        messages=[USER, {"role": "assistant", "content": "who is there"}],
        add_generation_prompt=False,
    ),
    "thinking_on": dict(messages=[USER], enable_thinking=True),
    "thinking_on_with_system": dict(
        messages=[{"role": "system", "content": "Be careful."}, USER,
                  {"role": "assistant", "content": "who is there"},
                  {"role": "user", "content": "Gemma"}],
        enable_thinking=True,
    ),
    "thinking_on_finished": dict(
        messages=[USER, {"role": "assistant", "content": "who is there"}],
        add_generation_prompt=False, enable_thinking=True,
    ),
    "unicode_and_newlines": dict(messages=[
        {"role": "user", "content": "Café 😀 日本語\nline two\n\nline four"},
    ]),
}


def render(template_text, case):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.globals["raise_exception"] = raise_exception
    kwargs = {"add_generation_prompt": True, **case}
    text = environment.from_string(template_text).render(bos_token="<bos>", **kwargs)
    assert text.startswith("<bos>"), text[:40]
    return text[len("<bos>"):]


def main(small_path, large_path):
    small = pathlib.Path(small_path).read_text()
    large = pathlib.Path(large_path).read_text()
    oracle = {
        "generated_by": "tests/data/make_gemma4_chat_oracle.py",
        "template_revision": "Published: 2026-07-09 (ollama fb3076099 testdata)",
        "cases": {
            name: {**case, "small": render(small, case), "large": render(large, case)}
            for name, case in CASES.items()
        },
    }
    OUTPUT.write_text(json.dumps(oracle, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main(*sys.argv[1:])
