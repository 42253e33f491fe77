"""The Gemma transformer: embeddings, decoder blocks, final norm.

Gemma 1, 2 and 3 (text) are one class. What changes between generations is
a handful of switches, all in the constructor:

| switch                        | Gemma 1 | Gemma 2        | Gemma 3         |
|-------------------------------|---------|----------------|-----------------|
| attention_logit_soft_cap      | None    | 50.0           | None            |
| final_logit_soft_cap          | None    | 30.0           | None            |
| use_post_attention_norm       | False   | True           | True            |
| use_post_feedforward_norm     | False   | True           | True            |
| use_query_key_norm            | False   | False          | True            |
| sliding_window_size           | None    | 4096           | 512 or 1024     |
| sliding_window_pattern        | None    | 2 (alternate)  | 6 (5 local : 1) |
| rope_max_wavelength (global)  | 10,000  | 10,000         | 1,000,000       |
| local_rope_max_wavelength     | -       | 10,000         | 10,000          |
"""

import contextlib
import contextvars
import math

import keras
from keras import ops

from keras_gemma import memory
from keras_gemma.decoder_block import GemmaDecoderBlock
from keras_gemma.embedding import TiedEmbedding
from keras_gemma.quantization import QuantizableDense
from keras_gemma.rms_norm import RMSNorm
from keras_gemma.rotary_embedding import rotary_cos_sin
from keras_gemma.validation import check_token_dtype

# Set by `skip_weight_initialization`: loaders overwrite every weight, so
# drawing ~10^8 random numbers first would only waste time.
_SKIP_INITIALIZATION = contextvars.ContextVar("skip_initialization", default=False)


@contextlib.contextmanager
def skip_weight_initialization():
    """Backbones built in this context start with zeros, not random weights."""
    token = _SKIP_INITIALIZATION.set(True)
    try:
        yield
    finally:
        _SKIP_INITIALIZATION.reset(token)


# Constructor arguments that make up a backbone's config, with defaults.
CONFIG_DEFAULTS = {
    "layer_norm_epsilon": 1e-6,
    "dropout": 0.0,
    "query_pre_attn_scalar": None,
    "attention_logit_soft_cap": None,
    "final_logit_soft_cap": None,
    "use_post_attention_norm": False,
    "use_post_feedforward_norm": False,
    "use_query_key_norm": False,
    "sliding_window_size": None,
    "sliding_window_pattern": None,
    "rope_max_wavelength": 10_000.0,
    "rope_scaling_factor": 1.0,
    "local_rope_max_wavelength": None,
}
# Switches of one model only, left out of configs (and preset files) while
# they keep their default. EmbeddingGemma: see keras_gemma/text_embedder.py.
OPTIONAL_CONFIG = {"use_bidirectional_attention": False}
REQUIRED_CONFIG = (
    "vocabulary_size",
    "num_layers",
    "num_query_heads",
    "num_key_value_heads",
    "hidden_dim",
    "intermediate_dim",
    "head_dim",
)


class GemmaBackbone(keras.Model):
    """Gemma decoder-only transformer, returning final hidden states.

    Args:
        vocabulary_size: number of token ids.
        num_layers: number of decoder blocks.
        num_query_heads: attention heads for queries.
        num_key_value_heads: heads for keys and values (1 = multi-query).
        hidden_dim: width of the residual stream.
        intermediate_dim: width of the feed-forward's hidden layer, as in
            Hugging Face's ``intermediate_size``. (keras-hub's Gemma 1 and 2
            configs store twice this number; their presets are converted.)
        head_dim: width of each attention head; need not equal
            ``hidden_dim / num_query_heads``.
        layer_norm_epsilon: RMSNorm epsilon.
        dropout: dropout rate for attention probabilities and residual
            branches during training.
        query_pre_attn_scalar: queries are multiplied by its ``-0.5`` power;
            defaults to ``head_dim``.
        attention_logit_soft_cap, final_logit_soft_cap: Gemma 2's soft caps.
        use_post_attention_norm, use_post_feedforward_norm: Gemma 2 and 3's
            extra norms after each sub-layer.
        use_query_key_norm: Gemma 3's RMSNorm on query and key heads.
        sliding_window_size: if set, local layers attend only to the last
            ``sliding_window_size`` positions (the query's own included).
        sliding_window_pattern: every ``sliding_window_pattern``-th layer is
            global and the others are local (2 in Gemma 2, 6 in Gemma 3).
            ``None`` with a window size makes every layer local.
        rope_max_wavelength: RoPE base of global layers.
        rope_scaling_factor: positions of global layers are divided by it.
        local_rope_max_wavelength: RoPE base of local layers; defaults to
            ``rope_max_wavelength``.
        use_bidirectional_attention: EmbeddingGemma's encoder: no causal
            mask; global layers see every real token and local layers the
            keys within ``sliding_window_size // 2`` positions either side
            (as transformers' Gemma 3 with the same switch). No cache.
        dtype: a Keras dtype policy, e.g. ``"float32"``, ``"bfloat16"`` or
            ``"mixed_bfloat16"``.

    Example:

    ```python
    import numpy as np
    import keras_gemma

    backbone = keras_gemma.GemmaBackbone(
        vocabulary_size=256, num_layers=2, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64,
        head_dim=16,
    )
    hidden = backbone({
        "token_ids": np.array([[2, 17, 42, 0]]),
        "padding_mask": np.array([[1, 1, 1, 0]]),
    })  # (1, 4, 32)
    logits = backbone.compute_logits(hidden)  # (1, 4, 256)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_query_heads,
        num_key_value_heads,
        hidden_dim,
        intermediate_dim,
        head_dim,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        final_logit_soft_cap=None,
        use_post_attention_norm=False,
        use_post_feedforward_norm=False,
        use_query_key_norm=False,
        sliding_window_size=None,
        sliding_window_pattern=None,
        rope_max_wavelength=10_000.0,
        rope_scaling_factor=1.0,
        local_rope_max_wavelength=None,
        use_bidirectional_attention=False,
        dtype=None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.final_logit_soft_cap = final_logit_soft_cap
        self.use_post_attention_norm = use_post_attention_norm
        self.use_post_feedforward_norm = use_post_feedforward_norm
        self.use_query_key_norm = use_query_key_norm
        self.sliding_window_size = sliding_window_size
        self.sliding_window_pattern = sliding_window_pattern
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.local_rope_max_wavelength = local_rope_max_wavelength
        self.use_bidirectional_attention = use_bidirectional_attention
        _validate_config(self._config())
        memory.check_backbone(self)  # before any weight exists
        self.lora_config = None  # set by enable_lora

        policy = self.dtype_policy
        skip = _SKIP_INITIALIZATION.get()
        self.token_embedding = TiedEmbedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer="zeros" if skip else None,
            dtype=policy,
            name="token_embedding",
        )
        self.decoder_blocks = [
            GemmaDecoderBlock(
                hidden_dim=hidden_dim,
                intermediate_dim=intermediate_dim,
                num_query_heads=num_query_heads,
                num_key_value_heads=num_key_value_heads,
                head_dim=head_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                query_pre_attn_scalar=query_pre_attn_scalar,
                attention_logit_soft_cap=attention_logit_soft_cap,
                use_query_key_norm=use_query_key_norm,
                use_post_attention_norm=use_post_attention_norm,
                use_post_feedforward_norm=use_post_feedforward_norm,
                use_sliding_window=self.is_sliding_window_layer(i),
                dropout=dropout,
                kernel_initializer="zeros" if skip else "glorot_uniform",
                dtype=policy,
                name=f"decoder_block_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = RMSNorm(
            layer_norm_epsilon, dtype=policy, name="final_norm"
        )
        # Build eagerly, so weights exist (and can be counted or loaded)
        # before the first call.
        self.token_embedding.build()
        for block in self.decoder_blocks:
            block.build()
        self.final_norm.build((None, None, hidden_dim))
        self.built = True

    def is_sliding_window_layer(self, index):
        if self.sliding_window_size is None:
            return False
        if self.sliding_window_pattern is None:
            return True
        return (index + 1) % self.sliding_window_pattern != 0

    # -- forward -----------------------------------------------------------

    def call(self, inputs, training=False):
        """``inputs``: dict of ``token_ids`` and ``padding_mask``, (batch, time).

        Returns the final hidden states, (batch, time, hidden_dim).
        """
        if not isinstance(inputs, dict):
            inputs = {"token_ids": inputs}
        check_token_dtype(inputs["token_ids"], "The model's token_ids")
        hidden, _ = self.compute_hidden_states(
            inputs["token_ids"], inputs.get("padding_mask"), training=training
        )
        return hidden

    def compute_hidden_states(
        self,
        token_ids,
        padding_mask=None,
        cache=None,
        cache_update_index=0,
        training=False,
        positions=None,
    ):
        """Runs the transformer, optionally reading and writing a cache.

        With ``cache`` (from ``init_cache``), ``token_ids`` are placed at
        positions ``cache_update_index ...`` and attend to everything the
        cache holds before them; the updated cache is returned. Without it,
        the tokens are positions ``0 ... time - 1``. ``padding_mask`` marks
        the keys that may be attended to (batch, keys).

        ``positions`` (int, batch x time), with a cache, puts each row at its
        own positions instead (rows of one batch at different points of
        their sequences, as in continuous batching): row ``b`` writes its
        keys and values at ``positions[b]`` and attends to the cache
        positions up to them; ``cache_update_index`` is then unused.
        """
        time = ops.shape(token_ids)[1]
        key_length = time if cache is None else ops.shape(cache[0][0])[1]
        query_positions = ops.arange(time, dtype="int32") + ops.cast(
            cache_update_index, "int32"
        )
        key_positions = ops.arange(key_length, dtype="int32")
        distance = query_positions[:, None] - key_positions[None, :]
        window = self.sliding_window_size
        if self.use_bidirectional_attention and cache is not None:
            raise ValueError(
                "This backbone has bidirectional attention (an embedding "
                "model such as EmbeddingGemma): it cannot generate text. Use "
                "keras_gemma.GemmaTextEmbedder to embed texts."
            )
        if self.use_bidirectional_attention:
            # transformers' Gemma 3: |distance| < window // 2 + 1 locally.
            distance = ops.abs(distance)
            window = None if window is None else window // 2 + 1
        global_mask = ops.expand_dims(distance >= 0, 0)
        if padding_mask is not None:
            padding_mask = ops.cast(padding_mask, "bool")[:, None, :]
            global_mask = ops.logical_and(global_mask, padding_mask)
        local_mask = global_mask
        if window is not None:
            in_window = ops.expand_dims(distance < window, 0)
            local_mask = ops.logical_and(global_mask, in_window)

        global_rotary = rotary_cos_sin(
            query_positions,
            self.head_dim,
            self.rope_max_wavelength,
            self.rope_scaling_factor,
        )
        local_rotary = rotary_cos_sin(
            query_positions,
            self.head_dim,
            self.local_rope_max_wavelength or self.rope_max_wavelength,
        )

        if positions is not None:
            global_mask, local_mask, global_rotary, local_rotary = (
                self._per_row_masks_and_rotary(positions, key_length, padding_mask)
            )
            cache_update_index = ops.cast(positions, "int32")  # per row, see attention

        x = self.token_embedding(token_ids)
        x = x * ops.cast(math.sqrt(self.hidden_dim), x.dtype)
        new_cache = []
        for i, block in enumerate(self.decoder_blocks):
            local = block.use_sliding_window
            rotary_cos, rotary_sin = local_rotary if local else global_rotary
            x = block(
                x,
                attention_mask=local_mask if local else global_mask,
                rotary_cos=rotary_cos,
                rotary_sin=rotary_sin,
                cache=None if cache is None else cache[i],
                cache_update_index=cache_update_index,
                training=training,
            )
            if cache is not None:
                x, layer_cache = x
                new_cache.append(layer_cache)
        x = self.final_norm(x)
        return x, (new_cache if cache is not None else None)

    def _per_row_masks_and_rotary(self, positions, key_length, padding_mask):
        """``compute_hidden_states``' masks and RoPE tables for per-row positions."""
        positions = ops.cast(positions, "int32")  # (batch, time)
        batch, time = ops.shape(positions)[0], ops.shape(positions)[1]
        distance = positions[:, :, None] - ops.arange(key_length, dtype="int32")
        global_mask = distance >= 0
        if padding_mask is not None:
            global_mask = ops.logical_and(
                global_mask, ops.cast(padding_mask, "bool")[:, None, :]
            )
        local_mask = global_mask
        if self.sliding_window_size is not None:
            local_mask = ops.logical_and(global_mask, distance < self.sliding_window_size)
        flat = ops.reshape(positions, (-1,))
        wavelengths = (
            (self.rope_max_wavelength, self.rope_scaling_factor),
            (self.local_rope_max_wavelength or self.rope_max_wavelength, 1.0),
        )
        global_rotary, local_rotary = (
            tuple(
                ops.reshape(table, (batch, time, self.head_dim))
                for table in rotary_cos_sin(flat, self.head_dim, wavelength, scaling)
            )
            for wavelength, scaling in wavelengths
        )
        return global_mask, local_mask, global_rotary, local_rotary

    def compute_logits(self, hidden_states):
        """Projects hidden states to float32 vocabulary logits."""
        logits = self.token_embedding(hidden_states, reverse=True)
        logits = ops.cast(logits, "float32")
        if self.final_logit_soft_cap is not None:
            cap = self.final_logit_soft_cap
            logits = ops.tanh(logits / cap) * cap
        return logits

    def init_cache(self, batch_size, max_length, dtype=None):
        """An empty key/value cache: one ``(key, value)`` pair per layer."""
        shape = (batch_size, max_length, self.num_key_value_heads, self.head_dim)
        dtype = dtype or self.compute_dtype
        return [
            (ops.zeros(shape, dtype), ops.zeros(shape, dtype))
            for _ in range(self.num_layers)
        ]

    # -- config ------------------------------------------------------------

    def _config(self):
        config = {
            name: getattr(self, name)
            for name in (*REQUIRED_CONFIG, *CONFIG_DEFAULTS)
        }
        for name, default in OPTIONAL_CONFIG.items():
            if getattr(self, name) != default:
                config[name] = getattr(self, name)
        return config

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            **self._config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @staticmethod
    def count_parameters(config):
        """Parameters of a backbone with this config, without building it."""
        config = {**CONFIG_DEFAULTS, **config}
        hidden = config["hidden_dim"]
        head_dim = config["head_dim"]
        attention = hidden * head_dim * (
            2 * config["num_query_heads"] + 2 * config["num_key_value_heads"]
        )
        feedforward = 3 * hidden * config["intermediate_dim"]
        norms = hidden * (
            2
            + config["use_post_attention_norm"]
            + config["use_post_feedforward_norm"]
        )
        if config["use_query_key_norm"]:
            norms += 2 * head_dim
        per_layer = attention + feedforward + norms
        embedding = config["vocabulary_size"] * hidden
        return embedding + config["num_layers"] * per_layer + hidden

    @classmethod
    def from_preset(cls, preset, load_weights=True, dtype=None, **kwargs):
        """Builds the backbone of a preset name, directory or checkpoint.

        See ``keras_gemma.presets`` for the places searched. With
        ``load_weights=False`` only the architecture is built (random
        weights), which needs no files beyond the preset's JSON.
        """
        from keras_gemma import preset_io

        return preset_io.load_backbone(
            preset, load_weights=load_weights, dtype=dtype, **kwargs
        )

    # -- distribution (see keras_gemma/distribution.py) ----------------------

    @staticmethod
    def get_layout_map(
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
        num_key_value_heads=None,
    ):
        """A ``keras.distribution.LayoutMap`` sharding the weights over the
        mesh's model axis (JAX only). Use it with
        ``keras.distribution.ModelParallel(layout_map=..., batch_dim_name=...)``
        before ``from_preset``. Key/value projections are replicated unless
        ``num_key_value_heads`` (> 1, divisible by the model axis) is given.
        """
        from keras_gemma import distribution

        return distribution.get_layout_map(
            device_mesh,
            model_parallel_dim_name=model_parallel_dim_name,
            data_parallel_dim_name=data_parallel_dim_name,
            num_key_value_heads=num_key_value_heads,
        )

    # -- quantization --------------------------------------------------------

    def quantize(self, mode="int8", config=None, **kwargs):
        """Stores every weight matrix as int8 with group scales.

        Weight-only: one float32 scale per 32 values along each matrix's
        input axis (see ``keras_gemma/quantization.py``); activations and
        norm scales stay in the compute dtype. Only ``"int8"`` is supported;
        ``config`` (which Keras' ``quantize`` machinery fills with its own
        default) is not used.
        """
        if mode != "int8":
            raise ValueError(
                f"GemmaBackbone.quantize supports mode='int8' only, got {mode!r}."
            )
        if self.is_quantized:
            raise ValueError("This backbone is already quantized to int8.")
        if kwargs:
            raise TypeError(f"Unexpected arguments to quantize: {sorted(kwargs)}.")
        for layer in self._flatten_layers():
            if isinstance(layer, QuantizableDense):
                layer.quantize(mode)
        self.token_embedding.quantize(mode)
        self.train_function = self.test_function = self.predict_function = None

    @property
    def is_quantized(self):
        return self.token_embedding.is_int8

    # -- LoRA (see keras_gemma/lora.py) --------------------------------------

    def enable_lora(self, rank, alpha=None, target=("query", "value"),
                    target_layer_names=None):
        """Freezes every weight and adds rank-``rank`` adapters to ``target``.

        ``target`` names projections in every decoder block: ``query``,
        ``key``, ``value``, ``output`` (attention) and ``gate``, ``up``,
        ``down`` (feed-forward). The update is ``(alpha / rank) * A @ B``;
        ``alpha`` defaults to ``rank``. Adds ``rank * (in + out)`` trainable
        parameters per adapted kernel, in float32. keras-hub's
        ``target_layer_names`` (e.g. ``["query", "value", "ffw_linear"]``)
        may be given instead of ``target``.
        """
        from keras_gemma import lora

        lora.enable_lora(self, rank, alpha=alpha, target=target,
                         target_layer_names=target_layer_names)

    def save_lora_weights(self, filepath):
        """Writes only the LoRA adapter to ``filepath`` (HDF5), atomically."""
        from keras_gemma import lora

        lora.save_lora_weights(self, filepath)

    def load_lora_weights(self, filepath):
        """Loads an adapter from ``save_lora_weights``, enabling LoRA if needed."""
        from keras_gemma import lora

        lora.load_lora_weights(self, filepath)

    def load_peft_adapter(self, folder):
        """Loads a Hugging Face ``peft`` LoRA adapter folder
        (``adapter_config.json`` + ``adapter_model.safetensors``)."""
        from keras_gemma.checkpoints import peft

        peft.load_peft_adapter(self, folder)

    def save_peft_adapter(self, folder, base_model_name_or_path=None):
        """Writes the LoRA adapter as a ``peft`` folder, loadable with
        ``peft.PeftModel.from_pretrained`` on the transformers model."""
        from keras_gemma.checkpoints import peft

        peft.save_peft_adapter(self, folder, base_model_name_or_path)

    def merge_lora(self):
        """Folds the adapter into the base kernels (base speed, same outputs)."""
        from keras_gemma import lora

        lora.merge_lora(self)

    def save_to_preset(self, preset_dir):
        """Writes config and weights in keras-hub's preset layout, atomically."""
        from keras_gemma import preset_io

        preset_io.save_preset(preset_dir, backbone=self)


def _validate_config(config):
    for name in REQUIRED_CONFIG:
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"GemmaBackbone: `{name}` must be a positive integer, got "
                f"{value!r}."
            )
    if config["num_query_heads"] % config["num_key_value_heads"]:
        raise ValueError(
            "GemmaBackbone: `num_query_heads` "
            f"({config['num_query_heads']}) must be a multiple of "
            f"`num_key_value_heads` ({config['num_key_value_heads']})."
        )
    if config["head_dim"] % 2:
        raise ValueError(
            f"GemmaBackbone: `head_dim` must be even for rotary embeddings, "
            f"got {config['head_dim']}."
        )
    window = config["sliding_window_size"]
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(
            "GemmaBackbone: `sliding_window_size` must be None or a positive "
            f"integer, got {window!r}."
        )
