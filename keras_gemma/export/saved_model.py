"""TensorFlow SavedModel export: next-token logits and greedy generation.

The SavedModel holds two traced TensorFlow programs and the model's weights
as plain ``tf.Variable``s; nothing in it refers to Python code, so
``tf.saved_model.load`` (and TF Serving, Vertex AI) reads it with only
TensorFlow installed, no keras_gemma and no Keras.

Signatures (every dimension is dynamic):

- ``serving_default``: ``token_ids`` int32 (batch, length) and
  ``padding_mask`` int32 (batch, length; 1 = real token, 0 = padding) ->
  ``logits`` float32 (batch, length, vocabulary), the logits of the token
  after each position (the same as calling the Keras model).
- ``generate``: the whole greedy loop with a key/value cache, compiled by
  XLA (``jit_compile=True``). ``token_ids`` int32 (batch, length) holds the
  prompts right-padded to the total length wanted (prompt + new tokens;
  each prompt starts with ``<bos>``), ``padding_mask`` int32 (batch, length)
  marks the prompt tokens. Returns ``token_ids`` int32 (batch, length), the
  prompts with the greedy continuation filled in (the same tokens as
  ``GemmaCausalLM.generate`` on that dict with a greedy sampler), and
  ``padding_mask`` int32 (batch, length): 1 for the prompt and the generated
  tokens before the first stop token, 0 from the stop token on. Generation
  ends early once every row has produced a stop token (by default the
  tokenizer's ``<eos>`` and ``<end_of_turn>``; ``stop_token_ids=`` changes
  them at export time).

There is no fixed maximum length: XLA compiles ``generate`` once per
(batch, length) shape it is called with, so a server should pad requests
to a few fixed lengths. Lengths past the model's context length are not
refused (the traced program cannot raise our error); keep within it.

The programs are traced from the model as it is: a model quantized with
``quantize("int8")`` is exported with its int8 weights and scales (the
program dequantizes as our layers do), and a LoRA model's adapters are
traced in (the exported numbers equal the model's own, adapter included).
Token ids must lie in the vocabulary (the programs do not check them).

Gemma 4's expert mixture (26B-A4B) cannot group tokens by expert when the
token count is unknown at trace time, so the traced programs gather each
(token, chosen expert) pair's weights: about 95 MB per token and layer
for 26B-A4B in bfloat16, so keep its prompts short (a few hundred tokens
per call).

Example (TensorFlow backend):

```python
import numpy as np
import tensorflow as tf
import keras_gemma
from keras_gemma.export.saved_model import export_saved_model

gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
export_saved_model(gemma, "gemma_saved_model")

served = tf.saved_model.load("gemma_saved_model")
prompt = gemma.preprocessor.generate_preprocess(["The sky is"], 16)
out = served.signatures["generate"](
    token_ids=tf.constant(prompt["token_ids"], tf.int32),
    padding_mask=tf.constant(prompt["padding_mask"], tf.int32),
)
```
"""

from pathlib import Path

from keras_gemma.export.traced import check_traceable

# Read by the command line before it picks the backend: this module imports
# no Keras (nor TensorFlow, PyTorch) until an export runs.
REQUIRED_BACKEND = "tensorflow"
# The tokenizer's SentencePiece model goes here inside the SavedModel
# (TensorFlow's folder for files its loader ignores), so a server can turn
# text into the token ids the signatures take.
TOKENIZER_FOLDER = "assets.extra"
# Stop-id slots in the traced program (unused ones hold -1).
_STOP_SLOTS = 4


def export_saved_model(model, destination, quantization=None, overwrite=False,
                       stop_token_ids="auto"):
    """Writes ``model`` (a ``GemmaCausalLM``) as a SavedModel directory.

    Runs on the TensorFlow backend (``KERAS_BACKEND=tensorflow``); from
    another backend use ``keras-gemma export --format saved_model SRC DST``,
    which re-runs itself on TensorFlow. ``quantization`` must be None: the
    weights are exported as the model holds them (float, or int8 after
    ``model.quantize("int8")``). ``stop_token_ids``: what ends a row in the
    ``generate`` signature (``"auto"``: ``<eos>`` and ``<end_of_turn>``; a
    list of ids; None: always fill the whole length).

    Returns the directory written, as a string. An existing non-empty
    ``destination`` is refused unless ``overwrite``; a failed export leaves
    nothing behind.
    """
    check_traceable(
        model, quantization, "The SavedModel export", REQUIRED_BACKEND,
        "keras-gemma export --format saved_model SRC DST",
    )
    stop_ids = model._stop_token_ids(stop_token_ids)
    from keras_gemma.export.files import check_destination
    from keras_gemma.export.files import staged_directory

    check_destination(destination, overwrite)

    import tensorflow as tf

    from keras_gemma.evaluation.progress import bar

    with bar(3, "Exporting SavedModel") as advance:
        signatures = {"serving_default": _logits_function(model).get_concrete_function()}
        advance()
        signatures["generate"] = _generate_function(model, stop_ids).get_concrete_function()
        advance()
        # The Keras variables' own tf.Variables, tracked by a plain module:
        # the SavedModel then restores them without Keras. The functions go
        # in as signatures only (as module attributes, saving retraces them).
        module = tf.Module()
        module.model_variables = [variable.value for variable in model.variables]
        with staged_directory(destination, overwrite) as staging:
            tf.saved_model.save(module, str(staging), signatures=signatures)
            preprocessor = model.preprocessor
            if preprocessor is not None and preprocessor.has_tokenizer:
                preprocessor.tokenizer.save_assets(staging / TOKENIZER_FOLDER)
        advance()
    return str(Path(destination))


def _input_signature():
    import tensorflow as tf

    return [
        tf.TensorSpec([None, None], tf.int32, name="token_ids"),
        tf.TensorSpec([None, None], tf.int32, name="padding_mask"),
    ]


def _logits_function(model):
    import tensorflow as tf

    backbone = model.backbone

    # The backbone's tracing entry, not model.__call__: that one checks
    # concrete input values, which a traced signature does not have.
    @tf.function(input_signature=_input_signature())
    def logits(token_ids, padding_mask):
        hidden, _ = backbone.compute_hidden_states(token_ids, padding_mask)
        return {"logits": backbone.compute_logits(hidden)}

    return logits


def _generate_function(model, stop_ids):
    import tensorflow as tf

    from keras_gemma.samplers import GreedySampler

    backbone = model.backbone
    # The same decode loop GemmaCausalLM.generate compiles, with a greedy
    # sampler (which reads no random numbers).
    decode_loop = model._make_decode_loop(GreedySampler())
    stop = [-1] * max(_STOP_SLOTS, len(stop_ids))
    stop[: len(stop_ids)] = stop_ids

    @tf.function(input_signature=_input_signature(), jit_compile=True)
    def generate(token_ids, padding_mask):
        prompt_mask = tf.cast(padding_mask, tf.bool)
        batch_size, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        # Prefill every position in one pass (XLA needs static shapes, so
        # not just the prompts' shortest length): causal attention keeps
        # each prompt position's keys and values independent of what
        # follows, and the decode loop rewrites every position from the
        # shortest prompt's end on before any query reads it.
        cache = backbone.init_cache(batch_size, length)
        _, cache = backbone.compute_hidden_states(
            token_ids, cache=cache, cache_update_index=0
        )
        prompt_lengths = tf.reduce_sum(tf.cast(prompt_mask, tf.int32), axis=1)
        start = tf.maximum(tf.reduce_min(prompt_lengths), 1)
        output_ids, _, _, _ = decode_loop(
            token_ids,
            prompt_mask,
            tf.zeros([length, batch_size], tf.float32),
            tf.constant(stop, tf.int32),
            cache,
            tf.zeros([batch_size], tf.bool),
            start,
            length,
        )
        output_ids = tf.cast(output_ids, tf.int32)
        # As generate's output mask: the prompt, then the generated tokens
        # before the first stop token.
        is_stop = tf.reduce_any(output_ids[:, :, None] == tf.constant(stop)[None, None, :], -1)
        generated_stop = tf.logical_and(is_stop, tf.logical_not(prompt_mask))
        after_stop = tf.cumsum(tf.cast(generated_stop, tf.int32), axis=1) > 0
        return {
            "token_ids": output_ids,
            "padding_mask": tf.cast(tf.logical_not(after_stop), tf.int32),
        }

    return generate
