"""One Gemma transformer layer: attention, then a GeGLU feed-forward.

Gemma 2-4 add an RMSNorm after each sub-layer as well as before it
(``use_post_attention_norm`` / ``use_post_feedforward_norm``); Gemma 1 only
normalizes before. Gemma 4 adds, per layer:
- an expert mixture beside the dense feed-forward (``num_experts``; the
  dense output then gets its own norm, ``post_dense_feedforward_norm``, and
  the sum goes through ``post_feedforward_norm``),
- a per-layer input (``per_layer_input_dim``, E2B/E4B) mixed in after the
  feed-forward through a gate, a projection and a norm,
- a learned scalar multiplying the block's output (``use_layer_scalar``).
"""

import keras
from keras import ops

from keras_gemma.attention import GemmaAttention
from keras_gemma.expert_feed_forward import ExpertFeedForward
from keras_gemma.quantization import QuantizableDense
from keras_gemma.rms_norm import RMSNorm


class GemmaDecoderBlock(keras.layers.Layer):
    def __init__(
        self,
        hidden_dim,
        intermediate_dim,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        layer_norm_epsilon=1e-6,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        use_query_key_norm=False,
        use_post_attention_norm=False,
        use_post_feedforward_norm=False,
        use_sliding_window=False,
        norm_scale_plus_one=True,
        use_value_norm=False,
        value_from_key=False,
        computes_key_value=True,
        num_experts=None,
        num_experts_per_token=None,
        expert_intermediate_dim=None,
        per_layer_input_dim=0,
        use_layer_scalar=False,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.use_post_attention_norm = use_post_attention_norm
        self.use_post_feedforward_norm = use_post_feedforward_norm
        self.use_sliding_window = use_sliding_window
        self.num_experts = num_experts
        self.per_layer_input_dim = per_layer_input_dim
        self.use_layer_scalar = use_layer_scalar
        self.dropout = dropout
        policy = self.dtype_policy

        def norm(name):
            return RMSNorm(layer_norm_epsilon, scale_plus_one=norm_scale_plus_one,
                           dtype=policy, name=name)

        def dense(units, name):
            return QuantizableDense(
                units,
                use_bias=False,
                kernel_initializer=kernel_initializer,
                dtype=policy,
                name=name,
            )

        self.pre_attention_norm = norm("pre_attention_norm")
        self.attention = GemmaAttention(
            hidden_dim=hidden_dim,
            num_query_heads=num_query_heads,
            num_key_value_heads=num_key_value_heads,
            head_dim=head_dim,
            query_pre_attn_scalar=query_pre_attn_scalar,
            attention_logit_soft_cap=attention_logit_soft_cap,
            use_query_key_norm=use_query_key_norm,
            use_value_norm=use_value_norm,
            value_from_key=value_from_key,
            computes_key_value=computes_key_value,
            norm_scale_plus_one=norm_scale_plus_one,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
            kernel_initializer=kernel_initializer,
            dtype=policy,
            name="attention",
        )
        if use_post_attention_norm:
            self.post_attention_norm = norm("post_attention_norm")
        self.pre_feedforward_norm = norm("pre_feedforward_norm")
        self.feedforward_gate = dense(intermediate_dim, "feedforward_gate")
        self.feedforward_up = dense(intermediate_dim, "feedforward_up")
        self.feedforward_down = dense(hidden_dim, "feedforward_down")
        if num_experts:
            self.post_dense_feedforward_norm = norm("post_dense_feedforward_norm")
            self.experts = ExpertFeedForward(
                hidden_dim=hidden_dim,
                num_experts=num_experts,
                num_experts_per_token=num_experts_per_token,
                expert_intermediate_dim=expert_intermediate_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=kernel_initializer,
                dtype=policy,
                name="experts",
            )
        if use_post_feedforward_norm:
            self.post_feedforward_norm = norm("post_feedforward_norm")
        if per_layer_input_dim:
            self.per_layer_input_gate = dense(per_layer_input_dim, "per_layer_input_gate")
            self.per_layer_projection = dense(hidden_dim, "per_layer_projection")
            self.post_per_layer_input_norm = norm("post_per_layer_input_norm")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape=None):
        shape = (None, None, self.hidden_dim)
        self.pre_attention_norm.build(shape)
        self.attention.build(shape)
        if self.use_post_attention_norm:
            self.post_attention_norm.build(shape)
        self.pre_feedforward_norm.build(shape)
        self.feedforward_gate.build(shape)
        self.feedforward_up.build(shape)
        self.feedforward_down.build((None, None, self.intermediate_dim))
        if self.num_experts:
            self.post_dense_feedforward_norm.build(shape)
            self.experts.build()
        if self.use_post_feedforward_norm:
            self.post_feedforward_norm.build(shape)
        if self.per_layer_input_dim:
            self.per_layer_input_gate.build(shape)
            self.per_layer_projection.build((None, None, self.per_layer_input_dim))
            self.post_per_layer_input_norm.build(shape)
        if self.use_layer_scalar:
            # A buffer in transformers (not trained); loaded from checkpoints.
            self.layer_scalar = self.add_weight(
                name="layer_scalar", shape=(), initializer="ones", trainable=False
            )
        self.built = True

    def call(
        self,
        x,
        attention_mask,
        rotary_cos,
        rotary_sin,
        cache=None,
        cache_update_index=0,
        shared_key_value=None,
        per_layer_input=None,
        return_key_value=False,
        training=False,
    ):
        """Returns ``x``, or ``(x, (key, value))`` with a cache or
        ``return_key_value`` (see ``GemmaAttention.call``)."""
        h = self.pre_attention_norm(x)
        h, key_value = self.attention(
            h,
            attention_mask=attention_mask,
            rotary_cos=rotary_cos,
            rotary_sin=rotary_sin,
            cache=cache,
            cache_update_index=cache_update_index,
            shared_key_value=shared_key_value,
            training=training,
        )
        if self.use_post_attention_norm:
            h = self.post_attention_norm(h)
        x = x + self.dropout_layer(h, training=training)

        h = self.pre_feedforward_norm(x)
        gate = keras.activations.gelu(self.feedforward_gate(h), approximate=True)
        h = self.feedforward_down(gate * self.feedforward_up(h))
        if self.num_experts:
            # The router and the experts read the residual stream itself.
            h = self.post_dense_feedforward_norm(h) + self.experts(x)
        if self.use_post_feedforward_norm:
            h = self.post_feedforward_norm(h)
        x = x + self.dropout_layer(h, training=training)

        if self.per_layer_input_dim:
            h = keras.activations.gelu(self.per_layer_input_gate(x), approximate=True)
            h = self.per_layer_projection(h * ops.cast(per_layer_input, h.dtype))
            x = x + self.post_per_layer_input_norm(h)
        if self.use_layer_scalar:
            x = x * ops.cast(self.layer_scalar, x.dtype)
        if cache is not None or return_key_value:
            return x, key_value
        return x
