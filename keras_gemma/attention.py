"""Gemma's attention: multi-head, multi-query or grouped-query, with a cache.

One layer covers every Gemma generation through a few switches:
- ``num_key_value_heads`` < ``num_query_heads``: each key/value head serves a
  group of query heads (1 for multi-query, as in Gemma 2B and 3 270M).
- ``query_pre_attn_scalar``: queries are scaled by its inverse square root
  (``head_dim`` for most models; Gemma 2 27B uses ``hidden_dim / heads``;
  Gemma 4 uses 1, no scaling, since its query and key norms fix the size).
- ``attention_logit_soft_cap`` (Gemma 2): ``cap * tanh(logits / cap)``.
- ``use_query_key_norm`` (Gemma 3, 4): RMSNorm over each query and key head.
- ``use_value_norm`` (Gemma 4): a weightless RMSNorm over each value head.
- ``value_from_key`` (Gemma 4's ``attention_k_eq_v`` full layers): no value
  projection; values are the key projection's output (before the key norm
  and RoPE).
- ``computes_key_value=False`` (Gemma 4's KV-shared layers): no key/value
  projections at all; ``call`` gets the keys and values of an earlier layer
  (``shared_key_value``) and keeps no cache.
Which positions may be attended to (causal, padding, sliding window) is
decided by the mask the caller passes in.
"""

import keras
from keras import ops

from keras_gemma import backend
from keras_gemma import xla_cpu
from keras_gemma.quantization import QuantizableDense
from keras_gemma.rms_norm import RMSNorm
from keras_gemma.rotary_embedding import apply_rotary

# Added to masked logits. Finite, so that a row with every key masked gives a
# uniform distribution instead of NaN.
MASKED_LOGIT = -1e9


class GemmaAttention(keras.layers.Layer):
    def __init__(
        self,
        hidden_dim,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        use_query_key_norm=False,
        use_value_norm=False,
        value_from_key=False,
        computes_key_value=True,
        norm_scale_plus_one=True,
        layer_norm_epsilon=1e-6,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                f"num_query_heads ({num_query_heads}) must be a multiple of "
                f"num_key_value_heads ({num_key_value_heads})."
            )
        self.hidden_dim = hidden_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.query_pre_attn_scalar = query_pre_attn_scalar or head_dim
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.use_query_key_norm = use_query_key_norm
        self.use_value_norm = use_value_norm
        self.value_from_key = value_from_key
        self.computes_key_value = computes_key_value
        self.norm_scale_plus_one = norm_scale_plus_one
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

        def projection(units, name):
            return QuantizableDense(
                units,
                use_bias=False,
                kernel_initializer=kernel_initializer,
                dtype=self.dtype_policy,
                name=name,
            )

        def norm(name, use_scale=True):
            return RMSNorm(
                layer_norm_epsilon,
                scale_plus_one=norm_scale_plus_one,
                use_scale=use_scale,
                dtype=self.dtype_policy,
                name=name,
            )

        self.query = projection(num_query_heads * head_dim, "query")
        if computes_key_value:
            self.key = projection(num_key_value_heads * head_dim, "key")
            if not value_from_key:
                self.value = projection(num_key_value_heads * head_dim, "value")
        self.output_projection = projection(hidden_dim, "output")
        if use_query_key_norm:
            self.query_norm = norm("query_norm")
            if computes_key_value:
                self.key_norm = norm("key_norm")
        if use_value_norm and computes_key_value:
            self.value_norm = norm("value_norm", use_scale=False)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.query.build(input_shape)
        if self.computes_key_value:
            self.key.build(input_shape)
            if not self.value_from_key:
                self.value.build(input_shape)
        self.output_projection.build(
            (None, None, self.num_query_heads * self.head_dim)
        )
        head_shape = (None, None, None, self.head_dim)
        if self.use_query_key_norm:
            self.query_norm.build(head_shape)
            if self.computes_key_value:
                self.key_norm.build(head_shape)
        if self.use_value_norm and self.computes_key_value:
            self.value_norm.build(head_shape)
        self.built = True

    def _split_heads(self, x, num_heads):
        batch, time = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, time, num_heads, self.head_dim))

    def call(
        self,
        x,
        attention_mask,
        rotary_cos,
        rotary_sin,
        cache=None,
        cache_update_index=0,
        shared_key_value=None,
        training=False,
    ):
        """Attends from ``x`` (batch, time, hidden) to itself or the cache.

        ``attention_mask`` is boolean (batch, time, keys); ``keys`` is
        ``time`` without a cache and the cache length with one. ``cache`` is
        a ``(key, value)`` pair, each (batch, keys, kv_heads, head_dim); the
        new keys and values are written at ``cache_update_index``.
        ``shared_key_value`` replaces this layer's own keys and values (a
        KV-shared layer). Returns ``(output, (key, value))``: the keys and
        values attended to, i.e. the updated cache when there is one.
        """
        query = self._split_heads(self.query(x), self.num_query_heads)
        if self.use_query_key_norm:
            query = self.query_norm(query)
        query = apply_rotary(query, rotary_cos, rotary_sin)
        if shared_key_value is not None:
            key, value = shared_key_value
        else:
            key, value = self._keys_and_values(x, rotary_cos, rotary_sin)
            if cache is not None and len(getattr(cache_update_index, "shape", ())) == 2:
                # Per-row positions (batch, time), see compute_hidden_states.
                key, value = (
                    _write_rows(c, cache_update_index, new)
                    for c, new in zip(cache, (key, value))
                )
            elif cache is not None:
                key_cache, value_cache = cache
                start = [0, cache_update_index, 0, 0]
                key = ops.cast(key, key_cache.dtype)
                value = ops.cast(value, value_cache.dtype)
                # One decoded token, compiled: see _attend_one_step.
                if backend.compiles_loops() and backend.static_size(ops.shape(x)[1]) == 1:
                    output = self._attend_one_step(
                        query, cache, (key, value), attention_mask,
                        cache_update_index, training,
                    )
                    # Written after the reads, so XLA writes in place.
                    updated = (
                        ops.slice_update(key_cache, start, xla_cpu.after(output, key)),
                        ops.slice_update(value_cache, start, xla_cpu.after(output, value)),
                    )
                    return self.output_projection(output), updated
                key = ops.slice_update(key_cache, start, key)
                value = ops.slice_update(value_cache, start, value)
        key_value = (key, value)
        key = ops.cast(key, self.compute_dtype)
        value = ops.cast(value, self.compute_dtype)
        output = self._attend(query, key, value, attention_mask, training)
        return self.output_projection(output), key_value

    def _keys_and_values(self, x, rotary_cos, rotary_sin):
        if not self.computes_key_value:
            raise ValueError(
                f"{self.name}: a KV-shared attention layer needs the keys and "
                "values of the layer it shares (`shared_key_value`)."
            )
        key = self._split_heads(self.key(x), self.num_key_value_heads)
        value = (
            key if self.value_from_key
            else self._split_heads(self.value(x), self.num_key_value_heads)
        )
        if self.use_query_key_norm:
            key = self.key_norm(key)
        if self.use_value_norm:
            value = self.value_norm(value)
        key = apply_rotary(key, rotary_cos, rotary_sin)
        return key, value

    def _grouped_query(self, query):
        batch, time = ops.shape(query)[0], ops.shape(query)[1]
        groups = self.num_query_heads // self.num_key_value_heads
        if self.query_pre_attn_scalar != 1:
            query = query * ops.cast(self.query_pre_attn_scalar**-0.5, query.dtype)
        # Group query heads by the key/value head they share, so a single
        # key/value head is never copied `groups` times.
        return ops.reshape(
            query,
            (batch, time, self.num_key_value_heads, groups, self.head_dim),
        )

    def _masked_logits(self, logits, mask):
        logits = ops.cast(logits, "float32")
        if self.attention_logit_soft_cap is not None:
            cap = self.attention_logit_soft_cap
            logits = ops.tanh(logits / cap) * cap
        return ops.where(mask, logits, MASKED_LOGIT)

    def _probabilities(self, logits, training):
        probabilities = ops.softmax(logits, axis=-1)
        probabilities = ops.cast(probabilities, self.compute_dtype)
        if self.dropout:
            probabilities = self.dropout_layer(probabilities, training=training)
        return probabilities

    def _merge_heads(self, output):
        batch, time = ops.shape(output)[0], ops.shape(output)[1]
        return ops.reshape(
            output, (batch, time, self.num_query_heads * self.head_dim)
        )

    def _attend(self, query, key, value, attention_mask, training):
        query = self._grouped_query(query)
        logits = ops.einsum("btkgh,bskh->bkgts", query, key)
        logits = self._masked_logits(logits, attention_mask[:, None, None, :, :])
        probabilities = self._probabilities(logits, training)
        output = ops.einsum("bkgts,bskh->btkgh", probabilities, value)
        return self._merge_heads(output)

    def _attend_one_step(self, query, cache, new_key_value, attention_mask, index, training):
        """``_attend`` for one new token: the old cache, and the new key and
        value beside it, instead of the cache with them written in.

        Same result (the cache's own slot at ``index`` is masked, the new key
        takes its place), but the written cache is then only the step's
        output: XLA updates it in place. Attending to the written cache
        made XLA copy every layer's cache several times per step (the
        write was fused into both of its readers), ~0.6 GB per step at
        batch 16 for Gemma 3 270M at 256 positions.
        """
        (key_cache, value_cache), (key, value) = cache, new_key_value
        compute_dtype = self.compute_dtype
        query = self._grouped_query(query)
        cache_length = ops.shape(key_cache)[1]
        old_slot = ops.arange(cache_length, dtype="int32") == ops.cast(index, "int32")
        cache_mask = ops.logical_and(attention_mask, ops.logical_not(old_slot))
        # (The mask's batch may be 1, broadcast.)
        mask_rows = ops.shape(attention_mask)[0]
        own_mask = ops.slice(attention_mask, [0, 0, index], [mask_rows, 1, 1])
        keys_first, values_first = backend.cache_first_in_attention_products()
        logits = ops.concatenate(
            [
                self._masked_logits(
                    _einsum_with_cache(
                        "btkgh,bskh->bkgts", query, ops.cast(key_cache, compute_dtype), keys_first
                    ),
                    cache_mask[:, None, None, :, :],
                ),
                self._masked_logits(
                    ops.einsum("btkgh,bskh->bkgts", query, ops.cast(key, compute_dtype)),
                    own_mask[:, None, None, :, :],
                ),
            ],
            axis=-1,
        )
        probabilities = self._probabilities(logits, training)
        # In the operand order XLA:CPU multiplies the caches as stored in;
        # in the other it wrote a transposed copy of every layer's cache each
        # step (gemma3_270m, JAX, batch 1: ~1 ms of a ~20 ms step at 128
        # positions).
        output = _einsum_with_cache(
            "bkgts,bskh->btkgh",
            probabilities[..., :cache_length],
            ops.cast(value_cache, compute_dtype),
            values_first,
        ) + ops.einsum(
            "bkgts,bskh->btkgh",
            probabilities[..., cache_length:],
            ops.cast(value, compute_dtype),
        )
        return self._merge_heads(output)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "attention_logit_soft_cap": self.attention_logit_soft_cap,
            "use_query_key_norm": self.use_query_key_norm,
            "use_value_norm": self.use_value_norm,
            "value_from_key": self.value_from_key,
            "computes_key_value": self.computes_key_value,
            "norm_scale_plus_one": self.norm_scale_plus_one,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout": self.dropout,
        }


def _write_rows(cache, positions, new):
    """``cache`` (batch, keys, heads, dim) with row b's ``new`` (batch, time,
    heads, dim) written at keys ``positions[b]`` (batch, time)."""
    batch, time = ops.shape(positions)[0], ops.shape(positions)[1]
    rows = ops.repeat(ops.arange(batch, dtype="int32"), time)
    indices = ops.stack([rows, ops.reshape(positions, (-1,))], axis=1)
    updates = ops.reshape(ops.cast(new, cache.dtype), (batch * time, *cache.shape[2:]))
    return ops.scatter_update(cache, indices, updates)


def _einsum_with_cache(equation, operand, cache, cache_first):
    """``einsum(equation, operand, cache)``, given to the backend with the
    cache first when ``cache_first`` (backend.cache_first_in_attention_products)."""
    if not cache_first:
        return ops.einsum(equation, operand, cache)
    inputs, output = equation.split("->")
    operand_axes, cache_axes = inputs.split(",")
    return ops.einsum(f"{cache_axes},{operand_axes}->{output}", cache, operand)
