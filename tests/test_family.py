"""The rest of the Gemma family: ShieldGemma (keras_gemma.safety), CodeGemma
fill-in-the-middle, FunctionGemma's function calling, and full Gemma 3
multimodal checkpoints loaded as their text model."""

import json
import pathlib

import numpy as np
import pytest

import keras_gemma
from keras_gemma import fim
from keras_gemma import safety

DATA = pathlib.Path(__file__).resolve().parent / "data"
SHIELD_ORACLE = json.loads((DATA / "shieldgemma_oracle.json").read_text())["cases"]

# The model card's "Use with Transformers" example prompt, written out.
CARD_EXAMPLE = """You are a policy expert trying to help determine whether a user
prompt is in violation of the defined safety policies.

<start_of_turn>
Human Question: Create 20 paraphrases of I hate you
<end_of_turn>

Our safety principle is defined in the below:

* "No Harassment": The prompt shall not contain or seek generation of content that is malicious, intimidating, bullying, or abusive content targeting another individual (e.g., physical threats, denial of tragic events, disparaging victims of violence).

Does the human question violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure we answer
correctly.

"""


@pytest.fixture(scope="module")
def shield():
    return keras_gemma.GemmaCausalLM.from_preset(str(DATA / "hf_tiny_shieldgemma"))


# -- ShieldGemma prompts ----------------------------------------------------------


def test_prompt_equals_model_card_example():
    prompt = safety.shieldgemma_prompt("Create 20 paraphrases of I hate you", "harassment")
    assert prompt == CARD_EXAMPLE


@pytest.mark.parametrize("case", SHIELD_ORACLE, ids=lambda c: c["user_prompt"][:20])
def test_prompt_equals_oracle_prompt(case):
    policy = case["policy"][0] if len(case["policy"]) == 1 else case["policy"]
    assert safety.shieldgemma_prompt(
        case["user_prompt"], policy, case["response"]
    ) == case["prompt"]


def test_policy_texts_from_the_card():
    text = safety.policy_text("sexually_explicit")
    assert text.startswith('* "No Sexually Explicit Information": The prompt shall not')
    assert text.endswith("sex education are permitted.")
    assert safety.policy_text("dangerous_content", for_response=True).startswith(
        '* "No Dangerous Content": The chatbot shall not generate content that harming'
    )
    assert set(safety.POLICIES) == {
        "dangerous_content", "harassment", "hate_speech", "sexually_explicit",
    }


def test_several_policies_one_bullet_each():
    prompt = safety.shieldgemma_prompt("Hi", ["harassment", "hate_speech"])
    block = prompt.split("defined in the below:\n\n")[1].split("\n\nDoes")[0]
    assert block.splitlines() == [
        safety.policy_text("harassment"), safety.policy_text("hate_speech"),
    ]


def test_unknown_policy_name():
    with pytest.raises(ValueError, match="Unknown policy name 'violence'.*harassment"):
        safety.shieldgemma_prompt("Hi", "violence")
    with pytest.raises(ValueError, match="No policy given"):
        safety.shieldgemma_prompt("Hi", [])


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_to_classify(text):
    with pytest.raises(ValueError, match="user prompt to classify is empty"):
        safety.shieldgemma_prompt(text, "harassment")
    with pytest.raises(ValueError, match="response to classify is empty"):
        safety.shieldgemma_prompt("Hi", "harassment", response=text)


# -- ShieldGemma scores against transformers --------------------------------------


def _policy(case):
    return case["policy"][0] if len(case["policy"]) == 1 else case["policy"]


def test_tokens_match_sentencepiece(shield):
    tokenizer = shield.preprocessor.tokenizer
    for case in SHIELD_ORACLE:
        assert [tokenizer.bos_token_id] + tokenizer.tokenize(case["prompt"]) == case["token_ids"]


@pytest.mark.parametrize("case", SHIELD_ORACLE, ids=lambda c: c["user_prompt"][:20])
def test_violation_probability_matches_transformers(shield, case):
    p = safety.violation_probability(shield, case["user_prompt"], _policy(case), case["response"])
    assert isinstance(p, float)
    assert p == pytest.approx(case["p_yes"], abs=1e-5)


def test_violation_probability_batched_with_padding(shield):
    cases = [c for c in SHIELD_ORACLE if c["response"] is None and len(c["policy"]) == 1]
    assert len({len(c["token_ids"]) for c in cases}) > 1  # padding is exercised
    p = safety.violation_probability(
        shield, [c["user_prompt"] for c in cases], "harassment", batch_size=2
    )
    assert isinstance(p, np.ndarray) and p.shape == (len(cases),)
    np.testing.assert_allclose(p, [c["p_yes"] for c in cases], atol=1e-5)


def test_violation_probability_bad_input(shield):
    with pytest.raises(ValueError, match="empty"):
        safety.violation_probability(shield, "", "harassment")
    with pytest.raises(ValueError, match="non-empty list"):
        safety.violation_probability(shield, [], "harassment")
    with pytest.raises(ValueError, match="one response per user prompt"):
        safety.violation_probability(shield, ["a", "b"], "harassment", ["x"])
    with pytest.raises(ValueError, match="Unknown policy name"):
        safety.violation_probability(shield, "Hi", "dangerous")


def test_model_without_yes_no_pieces_is_rejected():
    model = keras_gemma.GemmaCausalLM.from_preset(str(DATA / "hf_tiny_gemma"))
    with pytest.raises(ValueError, match="no 'Yes' piece.*shieldgemma"):
        safety.violation_probability(model, "Hi", "harassment")


# -- the guard --------------------------------------------------------------------


class _FakeModel:
    """Stands in for a GemmaCausalLM: records calls, answers a fixed text."""

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def generate(self, prompt, **kwargs):
        assert kwargs.get("strip_prompt")
        self.prompts.append(prompt)
        return self.answer

    def stream(self, prompt, **kwargs):
        self.prompts.append(prompt)
        yield from self.answer.split(" ")


def test_guard_passes_below_threshold(shield):
    # P(Yes) of the tiny model is about 0.04 for every text.
    guard = safety.SafetyGuard(shield, policies=["harassment"], threshold=0.5)
    model = _FakeModel("fine answer")
    assert guard.generate(model, "Hi", max_length=8) == "fine answer"
    assert "".join(guard.stream(model, "Hi")) == "fineanswer"
    messages = [{"role": "user", "content": "Hi"}]
    assert guard.chat(model, messages) == "fine answer"
    assert model.prompts[-1] == keras_gemma.chat_template(messages)


def test_guard_refuses_prompt_before_generating(shield):
    guard = safety.SafetyGuard(shield, policies=["harassment"], threshold=0.01)
    model = _FakeModel("never")
    refusal = guard.generate(model, "Hi")
    assert "flagged by the safety classifier" in refusal and "harassment" in refusal
    assert list(guard.stream(model, "Hi")) == [refusal]
    assert model.prompts == []  # the model never ran


def test_guard_checks_the_response(shield):
    p_prompt = safety.violation_probability(shield, "Hi", "harassment")
    p_answer = safety.violation_probability(shield, "Hi", "harassment", "bad answer")
    assert p_answer != p_prompt
    threshold = (p_prompt + p_answer) / 2
    guard = safety.SafetyGuard(shield, policies=["harassment"], threshold=threshold, refusal=None)
    model = _FakeModel("bad answer")
    if p_answer > p_prompt:
        with pytest.raises(safety.UnsafeContentError, match="response was refused") as error:
            guard.generate(model, "Hi")
        assert error.value.stage == "response"
        assert model.prompts == ["Hi"]
    else:
        with pytest.raises(safety.UnsafeContentError, match="prompt was refused"):
            guard.generate(model, "Hi")


def test_guard_bad_arguments(shield):
    with pytest.raises(ValueError, match="threshold"):
        safety.SafetyGuard(shield, threshold=1.5)
    with pytest.raises(ValueError, match="Unknown policy name"):
        safety.SafetyGuard(shield, policies=["harasment"])


# -- CodeGemma fill-in-the-middle -------------------------------------------------

# The CodeGemma model card's example prompt, written out.
CARD_FIM_PROMPT = '''\
<|fim_prefix|>import datetime
def calculate_age(birth_year):
    """Calculates a person's age based on their birth year."""
    current_year = datetime.date.today().year
    <|fim_suffix|>
    return age<|fim_middle|>\
'''
CARD_PREFIX = '''import datetime
def calculate_age(birth_year):
    """Calculates a person's age based on their birth year."""
    current_year = datetime.date.today().year
    '''
CARD_SUFFIX = "\n    return age"


def test_code_infill_equals_model_card_example():
    assert keras_gemma.code_infill(CARD_PREFIX, CARD_SUFFIX) == CARD_FIM_PROMPT


def test_code_infill_bad_input():
    with pytest.raises(ValueError, match="nothing to infill"):
        keras_gemma.code_infill("", "")
    with pytest.raises(TypeError, match="suffix must be a string"):
        keras_gemma.code_infill("x", None)


def test_infill_stop_ids_are_the_card_terminators(shield):
    tokenizer = shield.preprocessor.tokenizer
    ids = fim.infill_stop_token_ids(tokenizer)
    # The card: terminators = [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX,
    # FIM_FILE_SEPARATOR] + [eos] (family_vocabulary.spm ids).
    assert ids == [8, 9, 10, 11, tokenizer.eos_token_id]
    assert [tokenizer.id_to_token(i) for i in ids[:4]] == [
        "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>",
    ]
    # The prompt's FIM markers become single tokens.
    tokens = tokenizer.tokenize(CARD_FIM_PROMPT)
    assert tokens[0] == 8 and tokens[-1] == 9 and tokens.count(10) == 1


def test_infill_passes_stop_ids_and_strips_prompt(shield):
    calls = []

    class Recorder:
        preprocessor = shield.preprocessor

        def generate(self, prompt, **kwargs):
            calls.append((prompt, kwargs))
            return "age = current_year - birth_year"

    middle = fim.infill(Recorder(), CARD_PREFIX, CARD_SUFFIX, max_new_tokens=5)
    assert middle == "age = current_year - birth_year"
    prompt, kwargs = calls[0]
    assert prompt == CARD_FIM_PROMPT
    assert kwargs["stop_token_ids"] == fim.infill_stop_token_ids(shield.preprocessor.tokenizer)
    assert kwargs["strip_prompt"] is True
    assert kwargs["max_length"] == len(shield.preprocessor.tokenizer.tokenize(prompt)) + 1 + 5


def test_infill_stops_at_a_fim_token(shield):
    # The tiny random model's greedy continuation of this prompt is the
    # <|fim_middle|> token (id 9) over and over: without stop ids it is
    # written out, with the infill stop ids generation ends before it.
    tokenizer = shield.preprocessor.tokenizer
    prompt = keras_gemma.code_infill("def add(a, b):", "\n")
    length = len(tokenizer.tokenize(prompt)) + 1
    raw = shield.generate(
        {"token_ids": [[tokenizer.bos_token_id] + tokenizer.tokenize(prompt)]},
        max_length=length + 3, stop_token_ids=None,
    )
    assert list(raw["token_ids"][0][length:]) == [9, 9, 9]
    assert fim.infill(shield, "def add(a, b):", "\n", max_new_tokens=3) == ""


def test_infill_needs_fim_tokens():
    model = keras_gemma.GemmaCausalLM.from_preset(str(DATA / "hf_tiny_gemma"))
    with pytest.raises(ValueError, match="no <\\|fim_prefix\\|> token.*code_gemma"):
        fim.infill(model, "a", "b")


# -- command line -----------------------------------------------------------------


def _cli(args, capsys):
    import os

    from keras_gemma import cli

    status = cli.main(args + ["--backend", os.environ.get("KERAS_BACKEND", "jax")])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_classify_help_shows_an_example(capsys):
    from keras_gemma import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["classify", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "keras-gemma classify" in out.split("example", 1)[1]
    assert "--policy" in out and "--threshold" in out


def test_classify_command(capsys):
    case = SHIELD_ORACLE[0]
    status, out, _ = _cli(["classify", case["user_prompt"], "--policy", "harassment",
                           "--preset", str(DATA / "hf_tiny_shieldgemma")], capsys)
    assert status == 0
    name, probability, verdict = out.strip().split("\t")
    assert name == "harassment" and verdict == "ok"
    assert float(probability) == pytest.approx(case["p_yes"], abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["classify", "", "--policy", "harassment"], "user prompt to classify is empty"),
    (["classify", "Hi", "--policy", "violence"], "Unknown policy name 'violence'"),
])
def test_classify_bad_input_is_one_line(args, message, capsys):
    status, out, err = _cli(args, capsys)
    assert status == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_generate_infill_suffix(capsys):
    status, out, err = _cli(["generate", "def add(a, b):", "--infill-suffix", "\n",
                             "--max-new-tokens", "3",
                             "--preset", str(DATA / "hf_tiny_shieldgemma")], capsys)
    assert status == 0 and out == "\n"  # stopped at <|fim_middle|>, see above
    status, out, err = _cli(["generate", "a", "--infill-suffix", "b",
                             "--preset", str(DATA / "hf_tiny_gemma")], capsys)
    assert status == 1 and "no <|fim_prefix|> token" in err


# -- FunctionGemma ----------------------------------------------------------------

from keras_gemma import function_calling as fc  # noqa: E402

# The FunctionGemma model card's example tool and answer.
CARD_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_temperature",
        "description": "Gets the current temperature for a given location.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city name, e.g. San Francisco",
                },
            },
            "required": ["location"],
        },
    },
}
CARD_MESSAGES = [
    {"role": "developer", "content": fc.DEVELOPER_PROMPT},
    {"role": "user", "content": "What's the temperature in London?"},
]
CARD_ANSWER = (
    "<start_function_call>call:get_current_temperature{location:<escape>London"
    "<escape>}<end_function_call>"
)
# FunctionGemma's chat template as rendered by llama.cpp for a get_weather
# tool (a public test pinned against llama.cpp's rendering and tokenization).
RENDERED_GET_WEATHER = (
    "<start_of_turn>developer\n"
    "You are a model that can do function calling with the following functions"
    "<start_function_declaration>declaration:get_weather{description:<escape>Get current "
    "weather for a location<escape>,parameters:{properties:{location:{description:<escape>"
    "City name<escape>,type:<escape>STRING<escape>}},required:[<escape>location<escape>],"
    "type:<escape>OBJECT<escape>}}<end_function_declaration><end_of_turn>\n"
    "<start_of_turn>user\nWhat's the weather in Paris?<end_of_turn>\n<start_of_turn>model\n"
)


def test_function_calling_prompt_matches_rendered_template():
    tool = {"name": "get_weather", "description": "Get current weather for a location",
            "parameters": {"type": "object", "required": ["location"], "properties": {
                "location": {"type": "string", "description": "City name"}}}}
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    assert fc.function_calling_prompt(messages, [tool]) == RENDERED_GET_WEATHER
    # The developer sentence written out gives the same prompt.
    with_developer = [{"role": "developer", "content": fc.DEVELOPER_PROMPT}] + messages
    assert fc.function_calling_prompt(with_developer, [tool]) == RENDERED_GET_WEATHER


def test_card_example_declaration_and_call():
    prompt = fc.function_calling_prompt(CARD_MESSAGES, [CARD_TOOL])
    assert (
        "<start_function_declaration>declaration:get_current_temperature{description:"
        "<escape>Gets the current temperature for a given location.<escape>,parameters:"
        "{properties:{location:{description:<escape>The city name, e.g. San Francisco"
        "<escape>,type:<escape>STRING<escape>}},required:[<escape>location<escape>],"
        "type:<escape>OBJECT<escape>}}<end_function_declaration>"
    ) in prompt
    assert fc.parse_function_calls("Sure. " + CARD_ANSWER + "<end_of_turn>") == [
        {"name": "get_current_temperature", "arguments": {"location": "London"}}
    ]
    assert fc.format_function_call("get_current_temperature", {"location": "London"}) == CARD_ANSWER


def test_parse_values_and_several_calls():
    text = (
        "<start_function_call>call:set_alarm{days:[<escape>Mon<escape>,<escape>Tue<escape>],"
        "hour:7,loud:true,note:null,ratio:0.5,when:{h:7,m:<escape>30, sharp<escape>}}"
        "<end_function_call><start_function_call>call:turn_on_flashlight{}<end_function_call>"
    )
    assert fc.parse_function_calls(text) == [
        {"name": "set_alarm", "arguments": {
            "days": ["Mon", "Tue"], "hour": 7, "loud": True, "note": None,
            "ratio": 0.5, "when": {"h": 7, "m": "30, sharp"}}},
        {"name": "turn_on_flashlight", "arguments": {}},
    ]
    # What format_function_call writes, parse reads back.
    arguments = {"a": "x, y", "b": [1, 2.5], "c": {"d": False}}
    assert fc.parse_function_calls(fc.format_function_call("f", arguments)) == [
        {"name": "f", "arguments": arguments}
    ]
    assert fc.format_function_response("f", {"ok": True}) == (
        "<start_function_response>response:f{ok:true}<end_function_response>"
    )


@pytest.mark.parametrize("text, message", [
    ("<start_function_call>call:f{a:<escape>cut", "cut off"),
    ("<start_function_call>call:f{a:<escape>x}<end_function_call>", "closing <escape>"),
    ("<start_function_call>call:f{a 1}<end_function_call>", "expected 'key:'"),
])
def test_parse_malformed_calls(text, message):
    with pytest.raises(ValueError, match=message):
        fc.parse_function_calls(text)


def test_function_calling_bad_input():
    with pytest.raises(ValueError, match="needs a 'name'"):
        fc.function_declaration({"description": "no name"})
    with pytest.raises(ValueError, match="Unknown role 'tool'"):
        fc.function_calling_prompt([{"role": "tool", "content": "x"}], [CARD_TOOL])
    with pytest.raises(ValueError, match="non-empty list"):
        fc.function_calling_prompt([], [CARD_TOOL])


def test_function_call_stop_ids(shield):
    tokenizer = shield.preprocessor.tokenizer  # family_vocabulary.spm
    assert fc.function_call_stop_token_ids(tokenizer) == [16, 5, 1]
    # The prompt's control tokens are single tokens for the tokenizer.
    tokens = tokenizer.tokenize(RENDERED_GET_WEATHER)
    assert tokens.count(12) == 1 and tokens.count(13) == 1 and tokens.count(18) == RENDERED_GET_WEATHER.count("<escape>") == 10


# -- full Gemma 3 (multimodal) checkpoints: the text model ------------------------


def test_hugging_face_multimodal_folder_loads_its_text_model():
    import sys

    sys.path.insert(0, str(DATA.parent))
    from tiny_models import PADDING_MASK, TOKEN_IDS

    folder = DATA / "hf_tiny_gemma3_multimodal"
    index = json.loads((folder / "config.json").read_text())
    assert index["architectures"] == ["Gemma3ForConditionalGeneration"]
    model = keras_gemma.GemmaCausalLM.from_preset(str(folder))
    logits = np.asarray(model.score(TOKEN_IDS, PADDING_MASK), "float32")
    # transformers' Gemma3ForConditionalGeneration on the same text.
    expected = np.load(DATA / "multimodal_oracle.npz")["logits"]
    np.testing.assert_allclose(logits[PADDING_MASK], expected[PADDING_MASK], atol=1e-4)


def test_keras_hub_multimodal_preset_loads_its_text_model():
    import h5py

    folder = DATA / "keras_hub_tiny_gemma3_multimodal"
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["vision_encoder"] is not None
    backbone = keras_gemma.GemmaBackbone.from_preset(str(folder))
    assert backbone.num_layers == 2 and backbone.use_query_key_norm
    with h5py.File(folder / "model.weights.h5") as f:
        embedding = f["layers/reversible_embedding/vars/0"][()]
        down = f["layers/gemma3_decoder_block_1/ffw_linear/vars/0"][()]
        assert any(name.startswith("gemma3_vision_encoder") for name in f["layers"])
    weights = {v.path: np.asarray(v.numpy()) for v in backbone.weights}
    np.testing.assert_array_equal(weights["token_embedding/embeddings"], embedding)
    np.testing.assert_array_equal(weights["decoder_block_1/feedforward_down/kernel"], down)


def test_asking_for_the_vision_tower_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot load a vision encoder.*text model"):
        keras_gemma.GemmaCausalLM.from_preset(
            str(DATA / "hf_tiny_gemma3_multimodal"), vision_encoder=True
        )
