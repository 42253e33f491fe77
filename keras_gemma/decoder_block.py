"""One Gemma transformer layer: attention, then a GeGLU feed-forward.

Gemma 2 and 3 add an RMSNorm after each sub-layer as well as before it
(``use_post_attention_norm`` / ``use_post_feedforward_norm``); Gemma 1 only
normalizes before.
"""

import keras
from keras import ops

from keras_gemma.attention import GemmaAttention
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
        self.dropout = dropout
        policy = self.dtype_policy

        def norm(name):
            return RMSNorm(layer_norm_epsilon, dtype=policy, name=name)

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
        if use_post_feedforward_norm:
            self.post_feedforward_norm = norm("post_feedforward_norm")
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
        if self.use_post_feedforward_norm:
            self.post_feedforward_norm.build(shape)
        self.built = True

    def call(
        self,
        x,
        attention_mask,
        rotary_cos,
        rotary_sin,
        cache=None,
        cache_update_index=0,
        training=False,
    ):
        h = self.pre_attention_norm(x)
        h = self.attention(
            h,
            attention_mask=attention_mask,
            rotary_cos=rotary_cos,
            rotary_sin=rotary_sin,
            cache=cache,
            cache_update_index=cache_update_index,
            training=training,
        )
        if cache is not None:
            h, cache = h
        if self.use_post_attention_norm:
            h = self.post_attention_norm(h)
        x = x + self.dropout_layer(h, training=training)

        h = self.pre_feedforward_norm(x)
        gate = keras.activations.gelu(self.feedforward_gate(h), approximate=True)
        h = self.feedforward_down(gate * self.feedforward_up(h))
        if self.use_post_feedforward_norm:
            h = self.post_feedforward_norm(h)
        x = x + self.dropout_layer(h, training=training)
        return (x, cache) if cache is not None else x
