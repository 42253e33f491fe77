"""The Gemma transformer: embeddings, decoder blocks, final norm.

Gemma 1, 2, 3 and 4 (text) are one class. What changes between generations
is a handful of switches, all in the constructor; ``layer_specs.py`` turns
them into one spec per layer (type, head size, window, RoPE, key/value
source, feed-forward width), read once:

| switch                        | Gemma 1 | Gemma 2       | Gemma 3         | Gemma 4                         |
|-------------------------------|---------|---------------|-----------------|---------------------------------|
| attention_logit_soft_cap      | None    | 50.0          | None            | None                            |
| final_logit_soft_cap          | None    | 30.0          | None            | 30.0                            |
| use_post_attention_norm       | False   | True          | True            | True                            |
| use_post_feedforward_norm     | False   | True          | True            | True                            |
| use_query_key_norm            | False   | False         | True            | True                            |
| norm_scale_plus_one           | True    | True          | True            | False (norms multiply by scale) |
| use_value_norm                | False   | False         | False           | True (weightless)               |
| query_pre_attn_scalar         | head_dim| 224 or h_dim  | head_dim        | 1 (no query scaling)            |
| sliding_window_size           | None    | 4096          | 512 or 1024     | 512 or 1024                     |
| sliding_window_pattern        | None    | 2 (alternate) | 6 (5 local : 1) | - (explicit `layer_types`)      |
| layer_types                   | -       | -             | -               | list, e.g. 4 local : 1 full     |
| global_head_dim               | -       | -             | -               | 512 (full layers; local 256)    |
| num_global_key_value_heads    | -       | -             | -               | fewer KV heads on full layers   |
| attention_k_eq_v              | False   | False         | False           | 26B, 31B: full layers V = K     |
| rope_max_wavelength (global)  | 10,000  | 10,000        | 1,000,000       | 1,000,000                       |
| rope_partial_rotary_factor    | 1.0     | 1.0           | 1.0             | 0.25 (proportional RoPE)        |
| local_rope_max_wavelength     | -       | 10,000        | 10,000          | 10,000                          |
| num_kv_shared_layers          | 0       | 0             | 0               | E2B 20, E4B 18: reuse K/V       |
| use_double_wide_mlp           | False   | False         | False           | E2B: KV-shared layers 2x wide   |
| per_layer_input_dim           | 0       | 0             | 0               | E2B, E4B: 256                   |
| num_experts (top-k, width)    | None    | None          | None            | 26B-A4B: 128 (8, 704)           |
| use_layer_scalar              | False   | False         | False           | True                            |
"""

import contextlib
import gc
import contextvars
import math

import keras
from keras import ops

from keras_gemma import memory
from keras_gemma.decoder_block import GemmaDecoderBlock
from keras_gemma.embedding import TiedEmbedding
from keras_gemma.expert_feed_forward import ExpertKernel
from keras_gemma.layer_specs import SLIDING, layer_specs, layer_types
from keras_gemma.per_layer_embedding import PerLayerEmbedding
from keras_gemma.quantization import QuantizableDense
from keras_gemma.rms_norm import RMSNorm
from keras_gemma.rotary_embedding import rotary_cos_sin
from keras_gemma.validation import check_model_inputs
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
# Gemma 4's switches (see the table above and layer_specs.py); their
# defaults are Gemma 1-3's behaviour, so older configs need not list them.
GEMMA4_CONFIG_DEFAULTS = {
    "norm_scale_plus_one": True,
    "use_value_norm": False,
    "layer_types": None,
    "global_head_dim": None,
    "num_global_key_value_heads": None,
    "attention_k_eq_v": False,
    "rope_partial_rotary_factor": 1.0,
    "num_kv_shared_layers": 0,
    "use_double_wide_mlp": False,
    "per_layer_input_dim": 0,
    "per_layer_vocabulary_size": None,
    "num_experts": None,
    "num_experts_per_token": None,
    "expert_intermediate_dim": None,
    "use_layer_scalar": False,
}
CONFIG_DEFAULTS.update(GEMMA4_CONFIG_DEFAULTS)
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
        norm_scale_plus_one: Gemma 1-3 norms multiply by ``1 + scale``;
            ``False`` (Gemma 4) multiplies by ``scale``.
        use_value_norm: Gemma 4's weightless RMSNorm on each value head.
        layer_types: an explicit ``"sliding_attention"`` /
            ``"full_attention"`` per layer (Gemma 4), instead of
            ``sliding_window_pattern``.
        global_head_dim, num_global_key_value_heads: head size and number of
            key/value heads of full-attention layers (default: ``head_dim``,
            ``num_key_value_heads``).
        attention_k_eq_v: full-attention layers have no value projection;
            their values are the key projection's output.
        rope_partial_rotary_factor: fraction of each full-attention head that
            RoPE rotates (Gemma 4's proportional RoPE, 0.25).
        num_kv_shared_layers: the last this-many layers compute no keys or
            values; each reuses those of the last earlier layer of its type
            (and needs no cache).
        use_double_wide_mlp: KV-shared layers have a feed-forward twice
            ``intermediate_dim`` wide.
        per_layer_input_dim, per_layer_vocabulary_size: Gemma 4 E2B/E4B's
            per-layer embeddings (see ``per_layer_embedding.py``); 0 = none.
        num_experts, num_experts_per_token, expert_intermediate_dim: an
            expert mixture beside every dense feed-forward (Gemma 4
            26B-A4B, see ``expert_feed_forward.py``).
        use_layer_scalar: a learned scalar multiplying each block's output.
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

    # A tiny Gemma 4: 2 sliding : 1 full layers, the full layer wider with
    # K = V, proportional RoPE, and a top-2-of-4 expert mixture.
    gemma4 = keras_gemma.GemmaBackbone(
        vocabulary_size=256, num_layers=3, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=32, intermediate_dim=64,
        head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
        attention_k_eq_v=True, query_pre_attn_scalar=1.0,
        norm_scale_plus_one=False, use_value_norm=True,
        use_query_key_norm=True, use_post_attention_norm=True,
        use_post_feedforward_norm=True, use_layer_scalar=True,
        sliding_window_size=4, rope_partial_rotary_factor=0.25,
        layer_types=["sliding_attention"] * 2 + ["full_attention"],
        num_experts=4, num_experts_per_token=2, expert_intermediate_dim=16,
    )
    hidden = gemma4({"token_ids": np.array([[2, 17, 42, 0]]),
                     "padding_mask": np.array([[1, 1, 1, 0]])})
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
        dtype=None,
        **kwargs,
    ):
        config = {
            name: kwargs.pop(name, default)
            for name, default in {**CONFIG_DEFAULTS, **OPTIONAL_CONFIG}.items()
        }
        super().__init__(dtype=dtype, **kwargs)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim
        for name, value in config.items():
            setattr(self, name, list(value) if name == "layer_types" and value else value)
        _validate_config(self._config())
        # Before the per-layer specs too: a config with 10^18 layers must be
        # refused, not listed.
        memory.check_backbone(self)  # before any weight exists
        self.layer_specs = layer_specs(self._config())
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
        if self.per_layer_input_dim:
            self.per_layer_embedding = PerLayerEmbedding(
                self.per_layer_vocabulary_size or vocabulary_size,
                hidden_dim,
                num_layers,
                self.per_layer_input_dim,
                layer_norm_epsilon=self.layer_norm_epsilon,
                embeddings_initializer="zeros" if skip else None,
                kernel_initializer="zeros" if skip else "glorot_uniform",
                dtype=policy,
                name="per_layer_embedding",
            )
        self.decoder_blocks = [
            GemmaDecoderBlock(
                hidden_dim=hidden_dim,
                intermediate_dim=spec.intermediate_dim,
                num_query_heads=num_query_heads,
                num_key_value_heads=spec.num_key_value_heads,
                head_dim=spec.head_dim,
                layer_norm_epsilon=self.layer_norm_epsilon,
                query_pre_attn_scalar=self.query_pre_attn_scalar,
                attention_logit_soft_cap=self.attention_logit_soft_cap,
                use_query_key_norm=self.use_query_key_norm,
                use_post_attention_norm=self.use_post_attention_norm,
                use_post_feedforward_norm=self.use_post_feedforward_norm,
                use_sliding_window=self.is_sliding_window_layer(spec.index),
                norm_scale_plus_one=self.norm_scale_plus_one,
                use_value_norm=self.use_value_norm,
                value_from_key=spec.value_from_key,
                computes_key_value=spec.kv_source is None,
                num_experts=self.num_experts,
                num_experts_per_token=self.num_experts_per_token,
                expert_intermediate_dim=self.expert_intermediate_dim,
                per_layer_input_dim=self.per_layer_input_dim,
                use_layer_scalar=self.use_layer_scalar,
                dropout=self.dropout,
                kernel_initializer="zeros" if skip else "glorot_uniform",
                dtype=policy,
                name=f"decoder_block_{spec.index}",
            )
            for spec in self.layer_specs
        ]
        self.final_norm = RMSNorm(
            self.layer_norm_epsilon,
            scale_plus_one=self.norm_scale_plus_one,
            dtype=policy,
            name="final_norm",
        )
        # Build eagerly, so weights exist (and can be counted or loaded)
        # before the first call.
        self.token_embedding.build()
        if self.per_layer_input_dim:
            self.per_layer_embedding.build()
        for block in self.decoder_blocks:
            block.build()
        self.final_norm.build((None, None, hidden_dim))
        self.built = True

    def is_sliding_window_layer(self, index):
        if self.sliding_window_size is None:
            return False
        config = {
            "num_layers": self.num_layers,
            "layer_types": getattr(self, "layer_types", None),
            "sliding_window_size": self.sliding_window_size,
            "sliding_window_pattern": self.sliding_window_pattern,
        }
        return layer_types(config)[index] == SLIDING

    # -- forward -----------------------------------------------------------

    def __call__(self, inputs, *args, **kwargs):
        check_model_inputs(inputs, "The model's token_ids")
        return super().__call__(inputs, *args, **kwargs)

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

        # One (cos, sin) table per distinct RoPE of the layers.
        rotary = {}
        for spec in self.layer_specs:
            if spec.rotary_key not in rotary:
                rotary[spec.rotary_key] = rotary_cos_sin(
                    query_positions,
                    spec.head_dim,
                    spec.rope_max_wavelength,
                    spec.rope_scaling_factor,
                    spec.rotary_fraction,
                )

        if positions is not None:
            global_mask, local_mask, rotary = self._per_row_masks_and_rotary(
                positions, key_length, padding_mask
            )
            cache_update_index = ops.cast(positions, "int32")  # per row, see attention

        x = self.token_embedding(token_ids)
        x = x * ops.cast(math.sqrt(self.hidden_dim), x.dtype)
        per_layer_inputs = None
        if self.per_layer_input_dim:
            per_layer_inputs = self.per_layer_embedding(token_ids, x)
        new_cache = []
        key_values = []  # what each layer attended to, for KV-shared layers
        for spec, block in zip(self.layer_specs, self.decoder_blocks):
            rotary_cos, rotary_sin = rotary[spec.rotary_key]
            has_cache = cache is not None and spec.kv_source is None
            x, key_value = block(
                x,
                attention_mask=local_mask if block.use_sliding_window else global_mask,
                rotary_cos=rotary_cos,
                rotary_sin=rotary_sin,
                cache=cache[spec.index] if has_cache else None,
                cache_update_index=cache_update_index,
                shared_key_value=(
                    None if spec.kv_source is None else key_values[spec.kv_source]
                ),
                per_layer_input=(
                    None if per_layer_inputs is None
                    else per_layer_inputs[:, :, spec.index, :]
                ),
                return_key_value=True,
                training=training,
            )
            key_values.append(key_value)
            if has_cache:
                new_cache.append(key_value)
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
        rotary = {}
        for spec in self.layer_specs:
            if spec.rotary_key not in rotary:
                tables = rotary_cos_sin(
                    flat,
                    spec.head_dim,
                    spec.rope_max_wavelength,
                    spec.rope_scaling_factor,
                    spec.rotary_fraction,
                )
                rotary[spec.rotary_key] = tuple(
                    ops.reshape(table, (batch, time, spec.head_dim)) for table in tables
                )
        return global_mask, local_mask, rotary

    def compute_logits(self, hidden_states, lm_head=None):
        """Projects hidden states to float32 vocabulary logits.

        ``lm_head``: None, or the copy ``transposed_lm_head`` made.
        """
        logits = self.token_embedding(hidden_states, reverse=True, transposed=lm_head)
        logits = ops.cast(logits, "float32")
        if self.final_logit_soft_cap is not None:
            cap = self.final_logit_soft_cap
            logits = ops.tanh(logits / cap) * cap
        return logits

    def transposes_lm_head(self, batch_size):
        """Whether decode loops of ``batch_size`` rows multiply a transposed
        copy of the tied LM head (``transposed_lm_head``) rather than the
        matrix as stored (see ``backend.transposes_lm_head``)."""
        return self.token_embedding.multiplies_transposed(batch_size)

    def transposed_lm_head(self):
        """The tied LM head as a (hidden_dim, vocabulary_size) copy, for
        ``compute_logits(..., lm_head=)``."""
        return self.token_embedding.transposed_matrix()

    def init_cache(self, batch_size, max_length, dtype=None):
        """An empty key/value cache: one ``(key, value)`` pair per layer that
        computes keys and values (KV-shared layers, which are always last,
        read those of the layer they share)."""
        dtype = dtype or self.compute_dtype
        cache = []
        for spec in self.layer_specs:
            if spec.kv_source is None:
                shape = (batch_size, max_length, spec.num_key_value_heads, spec.head_dim)
                cache.append((ops.zeros(shape, dtype), ops.zeros(shape, dtype)))
        return cache

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
        _validate_config(config)
        hidden = config["hidden_dim"]
        queries = config["num_query_heads"]
        total = config["vocabulary_size"] * hidden + hidden  # + final norm
        per_layer_dim = config["per_layer_input_dim"]
        if per_layer_dim:
            width = config["num_layers"] * per_layer_dim
            vocabulary = config["per_layer_vocabulary_size"] or config["vocabulary_size"]
            total += vocabulary * width + hidden * width + per_layer_dim
        experts = config["num_experts"]
        for spec in layer_specs(config):
            head_dim = spec.head_dim
            kv_width = spec.num_key_value_heads * head_dim
            total += 2 * hidden * queries * head_dim  # query, output
            if spec.kv_source is None:
                total += hidden * kv_width * (1 if spec.value_from_key else 2)
            if config["use_query_key_norm"]:
                total += head_dim * (2 if spec.kv_source is None else 1)
            total += 3 * hidden * spec.intermediate_dim
            total += hidden * (
                2
                + config["use_post_attention_norm"]
                + config["use_post_feedforward_norm"]
            )
            if experts:
                # router, router scale, per-expert scale, 3 kernels, 3 norms
                total += hidden * experts + hidden + experts
                total += 3 * experts * hidden * config["expert_intermediate_dim"]
                total += 3 * hidden
            if per_layer_dim:
                total += 2 * hidden * per_layer_dim + hidden
            total += bool(config["use_layer_scalar"])
        return total

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
        # Every projection, the expert kernels and both embedding tables
        # (the per-layer one is most of Gemma 4 E2B's bytes).
        for layer in self._flatten_layers():
            if isinstance(layer, (QuantizableDense, ExpertKernel, TiedEmbedding)):
                layer.quantize(mode)
        gc.collect()  # once, not per layer (see quantization.drop_float_variable)
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
        ``down`` (the dense feed-forward). Gemma 4 layers that lack a
        projection are skipped (KV-shared layers have no key/value), and
        the expert kernels, router and per-layer embeddings stay frozen.
        The update is ``(alpha / rank) * A @ B``;
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
    experts = config["num_experts"]
    if experts is not None:
        top_k = config["num_experts_per_token"]
        width = config["expert_intermediate_dim"]
        if isinstance(experts, bool) or not isinstance(experts, int) or experts < 1:
            raise ValueError(
                f"GemmaBackbone: `num_experts` must be None or a positive "
                f"integer, got {experts!r}."
            )
        if not isinstance(top_k, int) or not 1 <= top_k <= experts:
            raise ValueError(
                f"GemmaBackbone: `num_experts_per_token` (top-k) must be an "
                f"integer from 1 to `num_experts` ({experts}), got {top_k!r}."
            )
        if not isinstance(width, int) or width < 1:
            raise ValueError(
                "GemmaBackbone: a mixture of experts needs "
                f"`expert_intermediate_dim` (a positive integer), got {width!r}."
            )
    for name in ("global_head_dim", "num_global_key_value_heads"):
        value = config[name]
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(
                f"GemmaBackbone: `{name}` must be None or a positive integer, "
                f"got {value!r}."
            )
    kv_heads = config["num_global_key_value_heads"]
    if kv_heads and config["num_query_heads"] % kv_heads:
        raise ValueError(
            f"GemmaBackbone: `num_query_heads` ({config['num_query_heads']}) "
            f"must be a multiple of `num_global_key_value_heads` ({kv_heads})."
        )
