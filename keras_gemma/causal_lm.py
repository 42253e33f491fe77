"""``GemmaCausalLM``: a backbone with its preprocessor, for generation,
scoring and fine-tuning."""

import json

import keras
import numpy as np
from keras import ops

from keras_gemma import backend
from keras_gemma import memory
from keras_gemma import samplers as samplers_lib
from keras_gemma.backbone import GemmaBackbone
from keras_gemma.preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.quantization import levels_varying_with
from keras_gemma.tokenizer import GemmaTokenizer
from keras_gemma.validation import check_model_inputs
from keras_gemma.validation import check_token_ids

# The tokenizer module imports no Keras (it runs without a backend), so it
# is registered for Keras serialization here.
keras.saving.register_keras_serializable(package="keras_gemma")(GemmaTokenizer)

# Prompts are prefilled in buckets of this many positions, so prompts of
# similar length share one compiled program.
PREFILL_BUCKET = 32
# Total lengths (prompt + output) are rounded up to a multiple of this, so a
# new max_length does not recompile the decode loop. The key/value cache
# starts smaller and grows to the bucket (_cache_length).
LENGTH_BUCKET = 128


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaCausalLM(keras.Model):
    """A Gemma language model: next-token logits, ``generate``, ``score``, ``fit``.

    Calling the model on ``{"token_ids", "padding_mask"}`` returns float32
    logits (batch, time, vocabulary). ``generate`` takes strings (or
    token-id dicts) and returns strings; ``fit`` takes strings and trains
    with next-token cross-entropy through the preprocessor.

    Args:
        backbone: a ``keras_gemma.GemmaBackbone``.
        preprocessor: a ``keras_gemma.GemmaCausalLMPreprocessor`` or None
            (then ``generate`` and ``fit`` take token ids only).

    The two may also come in keras-hub's ``Gemma3CausalLM(preprocessor,
    backbone)`` order. ``model.save("x.keras")`` stores the tokenizer's
    vocabulary in the file, so ``keras.models.load_model("x.keras")`` gives
    back a model that generates the same text.

    Example:

    ```python
    import keras_gemma

    gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
    gemma.generate("The capital of France is", max_length=32)
    gemma.compile(sampler=keras_gemma.samplers.TopKSampler(k=10))
    gemma.generate(["Once upon a time", "def fib(n):"], max_length=48)
    ```
    """

    def __init__(self, backbone, preprocessor=None, **kwargs):
        # keras-hub's Gemma3CausalLM and Gemma4CausalLM take
        # (preprocessor, backbone) positionally; GemmaCausalLM the reverse.
        if isinstance(backbone, GemmaCausalLMPreprocessor) and not isinstance(
            preprocessor, GemmaCausalLMPreprocessor
        ):
            backbone, preprocessor = preprocessor, backbone
        if not isinstance(backbone, GemmaBackbone):
            raise TypeError(
                "GemmaCausalLM needs `backbone=` a keras_gemma GemmaBackbone "
                f"(e.g. GemmaBackbone.from_preset(...)), got {type(backbone).__name__}."
            )
        if preprocessor is not None and not isinstance(preprocessor, GemmaCausalLMPreprocessor):
            raise TypeError(
                "`preprocessor` must be a keras_gemma GemmaCausalLMPreprocessor "
                f"or None, got {type(preprocessor).__name__}."
            )
        super().__init__(**kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.sampler = samplers_lib.GreedySampler()
        self._generate_functions = {}
        # Most positions the model was trained on (from_preset sets it);
        # generate refuses a longer max_length. None: unknown.
        self.context_length = None
        self.built = True

    def __call__(self, inputs, *args, **kwargs):
        check_model_inputs(inputs, "The model's token_ids")
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=False):
        hidden = self.backbone(inputs, training=training)
        return self.backbone.compute_logits(hidden)

    # -- training ------------------------------------------------------------

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        weighted_metrics="auto",
        sampler="greedy",
        **kwargs,
    ):
        """Keras ``compile`` with language-model defaults, plus ``sampler``.

        Defaults: AdamW (learning rate 5e-5, weight decay 0.01, embeddings and
        norms excluded from decay), cross-entropy from logits with padding
        masked through sample weights, and token accuracy.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)
            optimizer.exclude_from_weight_decay(var_names=["scale", "embeddings"])
        if loss == "auto":
            # Average over real tokens only: padding has zero sample weight.
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            )
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy()]
        super().compile(
            optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs
        )
        self.sampler = samplers_lib.get(sampler)
        self._generate_functions = {}

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["sampler"] = samplers_lib.serialize(self.sampler)
        return config

    def compile_from_config(self, config):
        """Recompiles a loaded model as it was saved (``load_model``)."""
        config = dict(config)
        sampler = config.pop("sampler", "greedy")
        config = keras.saving.deserialize_keras_object(config)
        self.compile(sampler=samplers_lib.get(sampler), **config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _preprocess_for_training(self, x, y, sample_weight):
        """Strings (or prompt/response pairs) -> arrays; token arrays pass."""
        x = _strings_from_dataset(x)
        if _is_text(x):
            if self.preprocessor is None:
                raise ValueError(
                    "This model has no preprocessor, so it cannot train on "
                    "strings. Pass token ids, or build it with one."
                )
            if isinstance(x, (list, tuple)) and not x or (
                isinstance(x, dict) and not len(x["prompts"])
            ):
                raise ValueError("Got an empty dataset: no text to train on.")
            return self.preprocessor(x, y, sample_weight)
        if isinstance(x, dict) and "token_ids" in x:
            check_model_inputs(x)
            return x, y, sample_weight
        if hasattr(x, "as_numpy_iterator") or isinstance(x, keras.utils.PyDataset):
            return x, y, sample_weight  # yields model-ready batches itself
        raise TypeError(
            "GemmaCausalLM.fit() takes a list of strings, a dict of "
            "{'prompts': [...], 'responses': [...]}, a tf.data.Dataset of "
            "strings, or model-ready {'token_ids', 'padding_mask'} arrays with "
            f"labels; got {type(x).__name__}"
            + (f" of {type(x[0]).__name__}" if isinstance(x, (list, tuple)) and x else "")
            + "."
        )

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None,
            validation_data=None, **kwargs):
        """``keras.Model.fit``; text goes through the preprocessor first.

        ``x`` may be a list of strings (language modelling), a dict of
        ``{"prompts": [...], "responses": [...]}`` (only responses count in
        the loss), a ``tf.data.Dataset`` of strings, or token arrays. Text is
        tokenized up front, so ``batch_size``, ``epochs``, ``shuffle`` and
        ``validation_split`` work as usual.
        """
        x, y, sample_weight = self._preprocess_for_training(x, y, sample_weight)
        if validation_data is not None:
            validation_data = _strings_from_dataset(validation_data)
            if _is_text(validation_data):
                validation_data = self._preprocess_for_training(validation_data, None, None)
        return super().fit(
            x=x, y=y, batch_size=batch_size, sample_weight=sample_weight,
            validation_data=validation_data, **kwargs,
        )

    def predict(self, x, *args, **kwargs):
        # Checked before Keras starts: on JAX a failure inside its loop
        # leaves the model's variables emptied.
        check_model_inputs(x)
        return super().predict(x, *args, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._preprocess_for_training(x, y, sample_weight)
        return super().evaluate(
            x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs
        )

    # -- scoring -------------------------------------------------------------

    def score(self, token_ids, padding_mask=None, scoring_mode="logits",
              layer_intercept_fn=None, target_ids=None):
        """Logits (batch, time, vocabulary) or per-token loss (batch, time).

        As keras-hub's ``score``: with ``scoring_mode="loss"``, ``target_ids``
        (usually the inputs shifted left by one) are scored with
        cross-entropy, and padded positions get zero loss.
        ``layer_intercept_fn`` (keras-hub's hook into each layer's output)
        is not supported.
        """
        if layer_intercept_fn is not None:
            raise NotImplementedError(
                "score(layer_intercept_fn=...) is not supported by keras_gemma. "
                "To read hidden states, call model.backbone(inputs) (final "
                "states) or backbone.compute_hidden_states(...)."
            )
        if scoring_mode not in ("logits", "loss"):
            raise ValueError(
                f"`scoring_mode` must be 'logits' or 'loss', got {scoring_mode!r}."
            )
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError("scoring_mode='loss' needs `target_ids`.")
        token_ids = ops.convert_to_tensor(check_token_ids(token_ids, "score() token_ids"), "int32")
        if target_ids is not None:
            target_ids = check_token_ids(target_ids, "score() target_ids")
        if padding_mask is None:
            padding_mask = ops.ones_like(token_ids, "bool")
        with backend.no_grad():
            logits = self({"token_ids": token_ids, "padding_mask": padding_mask})
            if scoring_mode == "logits":
                return logits
            loss = keras.losses.sparse_categorical_crossentropy(
                ops.convert_to_tensor(target_ids, "int32"), logits, from_logits=True
            )
            return loss * ops.cast(padding_mask, loss.dtype)

    # -- generation ----------------------------------------------------------

    def generate(self, inputs, max_length=None, stop_token_ids="auto",
                 strip_prompt=False, seed=None, assistant_model=None):
        """Continues prompts with the compiled sampler, using a key/value cache.

        Args:
            inputs: a string, a list of strings, or a dict of ``token_ids``
                and ``padding_mask`` arrays (batch, length) with prompts
                right-padded; for a dict, the output is a dict of the same
                form with generated tokens filled in.
            max_length: total length, prompt included (default: the
                preprocessor's ``sequence_length``; for dict input, the
                dict's length).
            stop_token_ids: ``"auto"`` (``<eos>`` and ``<end_of_turn>``), a
                list of ids, or None to always generate to ``max_length``.
            strip_prompt: return only the new text, not prompt + new text.
            seed: integer making random samplers reproducible (default: the
                compiled sampler's ``seed``, as in keras-hub).

        Returns strings for string input (one string for one prompt).
        keras-hub's ``assistant_model`` (speculative decoding) is not
        supported.
        """
        if assistant_model is not None:
            raise NotImplementedError(
                "generate(assistant_model=...) (speculative decoding) is not "
                "supported by keras_gemma; generate with the model alone."
            )
        if isinstance(inputs, dict):
            token_ids, padding_mask, single = self._validate_token_input(inputs, max_length)
            strings = False
        else:
            if self.preprocessor is None:
                raise ValueError(
                    "generate() on strings needs a preprocessor; pass a dict "
                    "of token_ids and padding_mask instead."
                )
            _check_max_length(max_length)
            single = isinstance(inputs, str)
            self._check_generation(_prompt_count(inputs), max_length)
            batch = self.preprocessor.generate_preprocess(inputs, max_length)
            token_ids, padding_mask = batch["token_ids"], batch["padding_mask"]
            strings = True
        stop_ids = self._stop_token_ids(stop_token_ids)
        if seed is None:
            seed = self.sampler.next_seed()
        prompt_mask = padding_mask.copy()
        token_ids = self._generate_tokens(token_ids, padding_mask, stop_ids, seed)
        output_mask = _mask_after_stop(token_ids, prompt_mask, stop_ids)
        if strip_prompt:
            output_mask &= ~prompt_mask
        if not strings:
            if single:
                return {"token_ids": token_ids[0], "padding_mask": output_mask[0]}
            return {"token_ids": token_ids, "padding_mask": output_mask}
        texts = self.preprocessor.generate_postprocess(
            {"token_ids": token_ids, "padding_mask": output_mask}
        )
        return texts[0] if single else texts

    def _validate_token_input(self, inputs, max_length):
        media = sorted({"images", "audio", "videos", "video"} & set(inputs))
        if media:
            raise ValueError(
                f"generate() got {', '.join(media)}: keras_gemma is text-only "
                "(no image, audio or video inputs). Pass the prompt as a string."
            )
        if "token_ids" not in inputs:
            raise ValueError("generate() dict input needs a 'token_ids' entry.")
        token_ids = check_token_ids(inputs["token_ids"], "generate() token_ids")
        single = token_ids.ndim == 1
        token_ids = np.atleast_2d(token_ids).astype("int32")
        padding_mask = inputs.get("padding_mask")
        if padding_mask is None:
            padding_mask = token_ids != self.backbone_pad_id()
        padding_mask = np.atleast_2d(np.asarray(padding_mask)).astype(bool)
        if padding_mask.shape != token_ids.shape:
            raise ValueError(
                f"padding_mask has shape {padding_mask.shape} but token_ids "
                f"has {token_ids.shape}."
            )
        if not padding_mask[:, 0].all():
            raise ValueError("Every prompt needs at least one token, right-padded.")
        vocabulary_size = self.backbone.vocabulary_size
        if token_ids.min() < 0 or token_ids.max() >= vocabulary_size:
            raise ValueError(
                f"token_ids must lie in [0, {vocabulary_size}); got values from "
                f"{token_ids.min()} to {token_ids.max()}."
            )
        _check_max_length(max_length)
        length = token_ids.shape[1]
        self._check_generation(token_ids.shape[0], max_length or length)
        longest = int(padding_mask.sum(axis=1).max())
        if max_length is not None:
            if longest >= max_length:
                raise ValueError(
                    f"max_length={max_length} must exceed the longest prompt "
                    f"({longest} tokens)."
                )
            if max_length > length:
                pad = ((0, 0), (0, max_length - length))
                token_ids = np.pad(token_ids, pad, constant_values=self.backbone_pad_id())
                padding_mask = np.pad(padding_mask, pad)
            else:
                token_ids, padding_mask = token_ids[:, :max_length], padding_mask[:, :max_length]
        elif longest >= length:
            raise ValueError(
                "The token_ids leave no room to generate: pass `max_length` "
                "or pad the input to the total length you want."
            )
        return token_ids, padding_mask, single

    def _check_generation(self, batch_size, max_length, prefill_length=1):
        """Refuses, up front, a length past the context or the free memory."""
        max_length = max_length or self.preprocessor.sequence_length
        memory.check_generation(
            self.backbone, batch_size, max_length,
            cache_length=-(-max_length // LENGTH_BUCKET) * LENGTH_BUCKET,
            prefill_length=prefill_length, context_length=self.context_length,
        )

    def backbone_pad_id(self):
        if self.preprocessor is not None:
            return self.preprocessor.tokenizer.pad_token_id
        return 0

    def _stop_token_ids(self, stop_token_ids):
        if stop_token_ids is None:
            return []
        if isinstance(stop_token_ids, str):
            if stop_token_ids != "auto":
                raise ValueError(
                    f"stop_token_ids must be 'auto', None or a list of ids, "
                    f"got {stop_token_ids!r}."
                )
            if self.preprocessor is None:
                return [1]  # Gemma's <eos>
            tokenizer = self.preprocessor.tokenizer
            ids = [tokenizer.eos_token_id, tokenizer.end_of_turn_token_id]
            return [i for i in ids if i is not None]
        if not isinstance(stop_token_ids, (list, tuple, np.ndarray)):
            raise TypeError(
                f"stop_token_ids must be 'auto', None or a list of ids, got "
                f"{type(stop_token_ids).__name__}: {stop_token_ids!r}."
            )
        ids = [int(i) for i in stop_token_ids]
        if any(not 0 <= i < self.backbone.vocabulary_size for i in ids):
            raise ValueError(f"stop_token_ids {ids} lie outside the vocabulary.")
        return ids

    def stream(self, prompt, max_length=None, stop_token_ids="auto", seed=None):
        """Yields the new text of one prompt piece by piece, as it is sampled.

        Takes the same arguments as ``generate`` for a single string and
        produces the same tokens; joined, the pieces equal
        ``generate(prompt, ..., strip_prompt=True)``. Each step runs one
        compiled decode call, so the text arrives token by token.

        Example:

        ```python
        for piece in gemma.stream("The capital of France is", max_length=40):
            print(piece, end="", flush=True)
        ```
        """
        if not isinstance(prompt, str):
            raise TypeError(
                "stream() takes one prompt string; got "
                f"{type(prompt).__name__}. Use generate() for batches."
            )
        if self.preprocessor is None:
            raise ValueError("stream() needs a preprocessor to turn text into tokens.")
        _check_max_length(max_length)
        self._check_generation(1, max_length)
        batch = self.preprocessor.generate_preprocess(prompt, max_length)
        stop_ids = self._stop_token_ids(stop_token_ids)
        if seed is None:
            seed = self.sampler.next_seed()
        state = self._start_generation(
            batch["token_ids"], batch["padding_mask"], stop_ids, seed,
            sample_first=True,
        )
        return self._stream_pieces(state, stop_ids)

    def _stream_pieces(self, state, stop_ids):
        tokenizer = self.preprocessor.tokenizer
        new_ids, emitted = [], ""
        while True:
            # The prefill samples the first token, each decode call one more.
            if len(new_ids) == state["index"] - state["prompt_end"]:
                if state["index"] >= state["max_length"]:
                    break
                state = self._decode(state, end=state["index"] + 1)
            if state["done"]:
                break  # the token just sampled is a stop token
            token = int(state["token_ids"][0, state["index"] - 1])
            new_ids.append(token)
            text = tokenizer.detokenize(new_ids)
            # A character split over several byte tokens decodes as U+FFFD
            # until its last byte arrives; hold it back until then.
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        text = tokenizer.detokenize(new_ids) if new_ids else ""
        if len(text) > len(emitted):
            yield text[len(emitted):]

    def _generate_tokens(self, token_ids, padding_mask, stop_ids, seed):
        state = self._start_generation(
            token_ids, padding_mask, stop_ids, seed, sample_first=True
        )
        # One new token (or a stop right away) needs no decode loop, so
        # none is compiled for it.
        if state["index"] < state["max_length"] and not state["done"]:
            state = self._decode(state, end=state["max_length"])
        return state["token_ids"][:, : state["max_length"]]

    def _compiled(self, name, make, *key):
        # The seed only changes the uniforms fed in, not the program.
        config = {k: v for k, v in self.sampler.get_config().items() if k != "seed"}
        key = (name, type(self.sampler).__name__, json.dumps(config), *key)
        if key not in self._generate_functions:
            self._generate_functions[key] = make()
        return self._generate_functions[key]

    def _start_generation(self, token_ids, padding_mask, stop_ids, seed, sample_first=False):
        """Pads to the length bucket, prefills the cache; returns the state.

        ``sample_first``: the prefill also samples the token after the
        shortest prompt (from its last position's hidden state, as the
        decode loop would), so a first token needs one compiled program,
        not two; the state's ``index`` is then one further.
        """
        batch_size, max_length = token_ids.shape
        # Arrays (and the cache) take the bucket's length, so every
        # max_length in a bucket reuses one compiled program; the decode loop
        # still stops at max_length.
        bucket = -(-max_length // LENGTH_BUCKET) * LENGTH_BUCKET
        pad = ((0, 0), (0, bucket - max_length))
        token_ids = np.pad(token_ids, pad, constant_values=self.backbone_pad_id())
        padding_mask = np.pad(padding_mask, pad)
        shortest = int(padding_mask.sum(axis=1).min())
        prefill_length = min(bucket, -(-shortest // PREFILL_BUCKET) * PREFILL_BUCKET)
        self._check_generation(batch_size, max_length, prefill_length)
        sample_first = sample_first and shortest < max_length
        sampler = self.sampler if sample_first else None
        prefill = self._compiled(
            "prefill",
            lambda: backend.compile_inference(
                self, self._make_prefill(prefill_length, sampler)
            ),
            prefill_length,
            sample_first,
        )
        rng = np.random.default_rng(seed)
        uniforms = rng.random((bucket, batch_size), dtype="float32")
        # A fixed number of stop-id slots, so new stop lists reuse the program.
        stop = np.full((max(4, len(stop_ids)),), -1, "int32")
        stop[: len(stop_ids)] = stop_ids
        state = {
            "token_ids": token_ids,
            "token_tensor": ops.convert_to_tensor(token_ids, "int32"),
            "padding_mask": ops.convert_to_tensor(padding_mask, "bool"),
            "uniforms": ops.convert_to_tensor(uniforms, "float32"),
            "stop_ids": ops.convert_to_tensor(stop, "int32"),
            "finished": ops.zeros((batch_size,), "bool"),
            "index": shortest,
            "prompt_end": shortest,
            "done": False,
            "max_length": max_length,
        }
        if not sample_first:
            return {**state, "cache": prefill(state["token_tensor"])}
        cache, token_tensor, finished = prefill(
            state["token_tensor"], state["padding_mask"], state["uniforms"],
            state["stop_ids"], ops.convert_to_tensor(shortest, "int32"),
        )
        return {
            **state,
            "token_ids": np.asarray(ops.convert_to_numpy(token_tensor)).astype("int32"),
            "token_tensor": token_tensor,
            "cache": cache,
            "finished": finished,
            "index": shortest + 1,
            "done": bool(np.all(ops.convert_to_numpy(finished))),
        }

    def _decode(self, state, end):
        """Decodes from ``state["index"]`` to ``end``, growing the cache
        (``_cache_length``) whenever the next position is past its end."""
        bucket = state["token_ids"].shape[1]
        while True:
            cache_length = state["cache"][0][0].shape[1]
            # A cache of n positions serves the steps up to index n, which
            # writes position n - 1.
            state = self._decode_in_cache(state, min(end, cache_length + 1))
            if state["done"] or state["index"] >= end:
                return state
            cache = list(state.pop("cache"))
            _grow_cache(cache, _cache_length(state["index"], bucket))
            state = {**state, "cache": cache}

    def _decode_in_cache(self, state, end):
        """Runs the compiled decode loop from ``state["index"]`` to ``end``."""
        if "lm_head" not in state:
            # Made once per generation, however many decode calls it takes.
            state = {**state, "lm_head": self._lm_head_for_decode(state["token_ids"].shape[0])}
        decode = self._compiled(
            "decode",
            lambda: backend.compile_inference(
                self, self._make_decode_loop(self.sampler), donate_argnums=(4,)
            ),
        )
        token_tensor, cache, finished, index = decode(
            state["token_tensor"],
            state["padding_mask"],
            state["uniforms"],
            state["stop_ids"],
            state["cache"],
            state["finished"],
            ops.convert_to_tensor(state["index"], "int32"),
            ops.convert_to_tensor(end, "int32"),
            state["lm_head"],
        )
        token_ids = np.asarray(ops.convert_to_numpy(token_tensor)).astype("int32")
        return {
            **state,
            "token_ids": token_ids,
            "token_tensor": token_tensor,
            "cache": cache,
            "finished": finished,
            "index": int(ops.convert_to_numpy(index)),
            "done": bool(np.all(ops.convert_to_numpy(finished))),
        }

    def _lm_head_for_decode(self, batch_size):
        """None, or the LM head copy decode loops of ``batch_size`` rows
        multiply (``backbone.transposes_lm_head``)."""
        if not self.backbone.transposes_lm_head(batch_size):
            return None
        transpose = self._compiled(
            "lm_head",
            lambda: backend.compile_inference(self, self.backbone.transposed_lm_head),
        )
        return transpose()

    def _make_prefill(self, prefill_length, sampler=None):
        """The cache of the first ``prefill_length`` positions; with a
        ``sampler``, also the token at ``index`` chosen (see ``_next_token``)."""
        backbone = self.backbone

        def prefill(token_ids, padding_mask=None, uniforms=None, stop_ids=None, index=None):
            batch_size, length = ops.shape(token_ids)
            cache = backbone.init_cache(batch_size, _cache_length(prefill_length, length))
            hidden, cache = backbone.compute_hidden_states(
                token_ids[:, :prefill_length], cache=cache, cache_update_index=0
            )
            if sampler is None:
                return cache
            last = ops.take(hidden, index - 1, axis=1)[:, None, :]
            logits = backbone.compute_logits(last)[:, 0, :]
            finished = ops.zeros((batch_size,), "bool")
            token_ids, finished = _next_token(
                sampler, logits, index, token_ids, padding_mask, uniforms, stop_ids, finished
            )
            return cache, token_ids, finished

        return prefill

    def _make_decode_loop(self, sampler):
        backbone = self.backbone

        def decode_loop(token_ids, padding_mask, uniforms, stop_ids, cache,
                        finished, index, end, lm_head=None):
            batch_size = ops.shape(token_ids)[0]

            def cond(index, token_ids, cache, finished):
                return ops.logical_and(index < end, ops.logical_not(ops.all(finished)))

            def body(index, token_ids, cache, finished):
                previous = ops.slice(token_ids, [0, index - 1], [batch_size, 1])
                # Compiled, int8 weights must be dequantized inside the loop
                # (see levels_varying_with); eager PyTorch has no such issue.
                varying = ops.cast(index >= 0, "int8") if backend.compiles_loops() else None
                with levels_varying_with(varying):
                    hidden, cache = backbone.compute_hidden_states(
                        previous, cache=cache, cache_update_index=index - 1
                    )
                    logits = backbone.compute_logits(hidden, lm_head)[:, 0, :]
                token_ids, finished = _next_token(
                    sampler, logits, index, token_ids, padding_mask, uniforms,
                    stop_ids, finished,
                )
                return index + 1, token_ids, cache, finished

            index, token_ids, cache, finished = backend.while_loop(
                cond, body, (index, token_ids, cache, finished)
            )
            return token_ids, cache, finished, index

        return decode_loop

    def quantize(self, mode="int8", config=None, filters=None, **kwargs):
        """Weight-only int8 for the backbone; see ``GemmaBackbone.quantize``.

        keras-hub's ``filters`` (quantize only some layers) is not supported.
        """
        if filters is not None:
            raise NotImplementedError(
                "quantize(filters=...) is not supported: keras_gemma quantizes "
                "every projection and the embedding. Call quantize('int8')."
            )
        self.backbone.quantize(mode, config=config, **kwargs)
        self._generate_functions = {}

    # -- presets -------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, load_weights=True, dtype=None, quantize=None, **kwargs):
        """A model from a preset name, preset directory or checkpoint path.

        ``dtype``: the weights' and computation's dtype policy (``"float32"``,
        ``"bfloat16"``, ``"mixed_bfloat16"``); default: the checkpoint's.
        ``quantize="int8"``: weight-only int8 (see ``quantize``), each
        tensor quantized as it is read, so the float model is never whole
        in memory. As in keras-hub, ``preprocessor=`` or ``backbone=`` use
        the given object instead of loading that part, and
        ``sequence_length=`` sizes the preprocessor loaded.
        """
        from keras_gemma import preset_io

        if quantize not in (None, "int8"):
            raise ValueError(
                f"`quantize` must be None or 'int8', got {quantize!r}."
            )
        return preset_io.load_causal_lm(
            preset, load_weights=load_weights, dtype=dtype, quantize=quantize, **kwargs
        )

    def save_to_preset(self, preset_dir, max_shard_size=None):
        """Writes backbone, tokenizer and preprocessor config atomically.

        The weights go in one ``model.weights.h5``; keras-hub's
        ``max_shard_size`` (split into shards) is accepted and ignored.
        """
        from keras_gemma import preset_io

        preset_io.save_preset(
            preset_dir, backbone=self.backbone, preprocessor=self.preprocessor
        )

    def export_to_huggingface(self, path, overwrite=False, adapter_only=False):
        """Writes a Hugging Face folder ``transformers`` loads (LoRA merged,
        or with ``adapter_only=True`` only the adapter, as a peft folder);
        see ``keras_gemma.export.huggingface``. Returns the folder's path."""
        from keras_gemma.export.huggingface import export_huggingface

        return export_huggingface(self, path, overwrite=overwrite, adapter_only=adapter_only)

    # keras-hub's name for it.
    export_to_transformers = export_to_huggingface

    # -- Keras serialization (model.save / keras.models.load_model) ---------

    def get_config(self):
        preprocessor = None
        if self.preprocessor is not None:
            preprocessor = keras.saving.serialize_keras_object(self.preprocessor)
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": preprocessor,
            "context_length": self.context_length,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        context_length = config.pop("context_length", None)
        custom_objects = {
            "GemmaBackbone": GemmaBackbone,
            "GemmaCausalLMPreprocessor": GemmaCausalLMPreprocessor,
        }
        for key in ("backbone", "preprocessor"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        model = cls(**config)
        model.context_length = context_length
        return model

    def save(self, filepath, *args, **kwargs):
        """``keras.Model.save``; the vocabulary is stored in the file too."""
        if self.backbone.is_quantized:
            raise ValueError(
                "int8 models cannot be saved as .keras files (Keras cannot "
                "rebuild keras_gemma's int8 layers). Save the float model and "
                "call quantize('int8') after loading, or use save_weights()."
            )
        return super().save(filepath, *args, **kwargs)

    # The tokenizer's vocabulary (plain Python, not a Keras layer, so Keras
    # does not visit it) travels as this model's asset: `load_model` calls
    # `load_assets` after `from_config`, which built a preprocessor whose
    # tokenizer is still missing.
    def save_assets(self, dir_path):
        if self.preprocessor is not None and self.preprocessor.has_tokenizer:
            self.preprocessor.tokenizer.save_assets(dir_path)

    def load_assets(self, dir_path):
        if self.preprocessor is not None and not self.preprocessor.has_tokenizer:
            self.preprocessor.tokenizer = GemmaTokenizer.load_assets(dir_path)


def _cache_length(positions, bucket):
    """The positions a key/value cache holding ``positions`` gets: the
    smallest LENGTH_BUCKET times a power of two, at most ``bucket``.

    Every decode step attends to the whole cache, so a cache the length
    of the bucket would make the first steps of a long generation attend
    to mostly empty positions (8 + 128 tokens in a bucket of 256: Gemma 3
    270M's batch-16 step ~10% slower on JAX, ~5% on TensorFlow). Doubling
    costs at most one copy of the cache and one more compiled decode loop
    per doubling, and every generation shares those loops.
    """
    length = LENGTH_BUCKET
    while length < positions:
        length *= 2
    return min(length, bucket)


def _grow_cache(cache, length):
    """Pads each key and value of ``cache`` (a list, replaced in place) with
    zeros to ``length`` positions, one layer at a time, so that memory
    holds at most one layer of the old cache beside the grown one."""
    for layer, pair in enumerate(cache):
        cache[layer] = tuple(
            ops.pad(array, [[0, 0], [0, length - array.shape[1]], [0, 0], [0, 0]])
            for array in pair
        )


def _next_token(sampler, logits, index, token_ids, padding_mask, uniforms, stop_ids, finished):
    """Writes the token at ``index`` (the prompt's where it has one, else
    sampled from ``logits``); marks rows that sampled a stop token."""
    sampled = sampler(logits, ops.take(uniforms, index, axis=0))
    in_prompt = ops.take(padding_mask, index, axis=1)
    given = ops.take(token_ids, index, axis=1)
    next_token = ops.where(in_prompt, given, sampled)
    token_ids = ops.slice_update(
        token_ids, [0, index], ops.cast(next_token[:, None], token_ids.dtype)
    )
    is_stop = ops.any(next_token[:, None] == stop_ids[None, :], axis=-1)
    finished = ops.logical_or(
        finished, ops.logical_and(ops.logical_not(in_prompt), is_stop)
    )
    return token_ids, finished


def _is_text(x):
    if isinstance(x, dict) and set(x) == {"prompts", "responses"}:
        return True
    if isinstance(x, str):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "USO"
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(
        isinstance(i, str) for i in x
    ) or (isinstance(x, (list, tuple)) and len(x) == 0)


def _prompt_count(inputs):
    return 1 if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__len__") else len(inputs)


def _strings_from_dataset(x):
    """A tf.data.Dataset of strings (batched or not) as a list of str."""
    if not hasattr(x, "as_numpy_iterator"):
        return x
    spec = x.element_spec
    if getattr(spec, "dtype", None) is None or spec.dtype.name != "string":
        return x
    strings = []
    for element in x.as_numpy_iterator():
        for item in np.atleast_1d(element):
            strings.append(item.decode("utf-8"))
    return strings


def _check_max_length(max_length):
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
    ):
        raise ValueError(f"`max_length` must be an integer >= 2, got {max_length!r}.")


def _mask_after_stop(token_ids, prompt_mask, stop_ids):
    """Positions to keep: the prompt, then generated tokens before a stop."""
    keep = np.ones_like(prompt_mask)
    if stop_ids:
        generated_stop = np.isin(token_ids, stop_ids) & ~prompt_mask
        after_stop = np.cumsum(generated_stop, axis=1) > 0
        keep &= ~after_stop
    return keep
