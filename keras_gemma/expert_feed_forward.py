"""Gemma 4's mixture of experts: a router and a bank of GeGLU experts.

In a Gemma 4 26B-A4B decoder block this runs beside the dense feed-forward
(their normalized outputs are summed). The router scores every expert for
each token from the block's residual stream and keeps the top
``num_experts_per_token``; only those experts run for that token, so a
token costs ``top_k`` expert feed-forwards whatever the number of experts.
(keras-hub's Gemma 4 runs every expert on every token and zeroes the
unselected outputs; transformers loops over experts.) Two ways, both with
static shapes on every backend:

- few (token, choice) pairs, as in decoding: each pair gathers its
  expert's weights (reading top_k experts per token, nothing more);
- many, as in a prompt: pairs are sorted by expert into blocks of rows of
  one expert each (padded per expert to the block size), each block
  gathers its expert once, and the results are gathered back. The weights
  read stay below twice the whole bank, and the work below the chosen
  experts' plus one block of padding per expert.

Weights, for E experts, hidden size H and expert width I:
``router_scale`` (H), ``router/kernel`` (H, E), ``per_expert_scale`` (E),
``gate/kernel`` and ``up/kernel`` (E, H, I), ``down/kernel`` (E, I, H),
and the two norms around the experts.
"""

import math

import keras
from keras import ops

from keras_gemma import backend
from keras_gemma import quantization
from keras_gemma.quantization import QuantizableDense
from keras_gemma.rms_norm import RMSNorm


class ExpertKernel(keras.layers.Layer):
    """One stacked kernel (experts, in, out) that can be gathered per token.

    After ``quantize("int8")`` it holds int8 levels of the same shape and
    one float32 scale per 32 inputs, like every other matrix of the model.
    """

    is_int8 = False

    def __init__(self, num_experts, input_dim, output_dim, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    @property
    def shape(self):
        return (self.num_experts, self.input_dim, self.output_dim)

    def build(self, input_shape=None):
        if quantization.building_int8():
            self._add_int8_variables()
        else:
            self.kernel = self.add_weight(
                name="kernel", shape=self.shape, initializer=self.kernel_initializer
            )
        self.built = True

    def gather(self, expert_ids):
        """The kernels of ``expert_ids`` (any shape S), as (*S, in, out)."""
        dtype = self.compute_dtype
        if not self.is_int8:
            return ops.take(ops.cast(self.kernel, dtype), expert_ids, axis=0)
        levels = quantization.levels_in_context(self.kernel_int8)
        levels = ops.take(levels, expert_ids, axis=0)
        scales = ops.take(self.kernel_scale, expert_ids, axis=0)
        return quantization.dequantize_groups(levels, scales, -2, dtype)

    # -- int8 (see quantization.py) -------------------------------------------

    def quantize(self, mode=None, type_check=True, config=None):
        if mode != "int8":
            raise NotImplementedError(
                f"{self.name}: keras_gemma supports quantize('int8') only, not {mode!r}."
            )
        if self.is_int8:
            return
        kernel = ops.convert_to_numpy(self.kernel)
        quantization.drop_float_variable(self, "kernel")
        self._tracker.unlock()
        self._add_int8_variables()
        self._tracker.lock()
        self.assign_float_weight(kernel)

    def _add_int8_variables(self):
        groups = self.input_dim // quantization.group_size(self.input_dim)
        self.kernel_int8 = self.add_weight(
            name="kernel_int8", shape=self.shape, dtype="int8",
            initializer="zeros", trainable=False,
        )
        self.kernel_scale = self.add_weight(
            name="kernel_scale", shape=(self.num_experts, groups, self.output_dim),
            dtype="float32", initializer="ones", trainable=False,
        )
        self.is_int8 = True

    @property
    def int8_variables(self):
        return (self.kernel_int8, self.kernel_scale)

    @property
    def float_weight(self):
        return self.kernel_int8.path.removesuffix("_int8"), self.shape

    def assign_float_weight(self, kernel):
        levels, scales = quantization.quantize_groups(kernel, axis=1)
        backend.assign_from_host(self.kernel_int8, levels)
        backend.assign_from_host(self.kernel_scale, scales)


class ExpertFeedForward(keras.layers.Layer):
    """Routes each token to its top-k GeGLU experts and mixes their outputs.

    ``call(x)`` takes the block's residual stream (batch, time, hidden) and
    returns the normalized expert mixture of the same shape.
    """

    def __init__(
        self,
        hidden_dim,
        num_experts,
        num_experts_per_token,
        expert_intermediate_dim,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.expert_intermediate_dim = expert_intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy

        def norm(name, use_scale=True):
            return RMSNorm(layer_norm_epsilon, scale_plus_one=False,
                           use_scale=use_scale, dtype=policy, name=name)

        def kernel(name, input_dim, output_dim):
            return ExpertKernel(num_experts, input_dim, output_dim,
                                kernel_initializer=kernel_initializer,
                                dtype=policy, name=name)

        self.router_norm = norm("router_norm", use_scale=False)
        self.router = QuantizableDense(
            num_experts, use_bias=False, kernel_initializer=kernel_initializer,
            dtype=policy, name="router",
        )
        self.pre_norm = norm("pre_norm")
        self.gate = kernel("gate", hidden_dim, expert_intermediate_dim)
        self.up = kernel("up", hidden_dim, expert_intermediate_dim)
        self.down = kernel("down", expert_intermediate_dim, hidden_dim)
        self.post_norm = norm("post_norm")

    def build(self, input_shape=None):
        shape = (None, self.hidden_dim)
        self.router_norm.build(shape)
        self.router.build(shape)
        self.router_scale = self.add_weight(
            name="router_scale", shape=(self.hidden_dim,), initializer="ones"
        )
        self.per_expert_scale = self.add_weight(
            name="per_expert_scale", shape=(self.num_experts,), initializer="ones"
        )
        self.pre_norm.build(shape)
        for layer in (self.gate, self.up, self.down):
            layer.build()
        self.post_norm.build(shape)
        self.built = True

    def route(self, x):
        """(expert ids, mixing weights), each (tokens, top_k), for ``x`` (tokens, hidden)."""
        h = self.router_norm(x)
        h = h * ops.cast(self.router_scale, h.dtype) * ops.cast(
            self.hidden_dim**-0.5, h.dtype
        )
        probabilities = ops.softmax(ops.cast(self.router(h), "float32"), axis=-1)
        weights, expert_ids = ops.top_k(probabilities, self.num_experts_per_token)
        weights = weights / ops.sum(weights, axis=-1, keepdims=True)
        scale = ops.take(ops.cast(self.per_expert_scale, "float32"), expert_ids, axis=0)
        return expert_ids, weights * scale

    def call(self, x):
        shape = ops.shape(x)
        flat = ops.reshape(x, (-1, self.hidden_dim))
        expert_ids, weights = self.route(flat)
        h = self.pre_norm(flat)
        # Static where the caller's shapes are; None when traced for any
        # length (a SavedModel or torch.export signature).
        tokens = backend.static_size(flat.shape[0])
        pairs = None if tokens is None else tokens * self.num_experts_per_token
        if pairs is None or pairs <= self.num_experts:
            h = self._per_pair(h, expert_ids)
        else:
            h = self._in_expert_blocks(h, expert_ids, pairs)
        h = ops.einsum("tkh,tk->th", h, ops.cast(weights, h.dtype))
        h = self.post_norm(h)
        return ops.reshape(h, shape)

    def _geglu(self, h, gate, up, down, pattern_in, pattern_out):
        gate = ops.einsum(pattern_in, h, gate)
        up = ops.einsum(pattern_in, h, up)
        return ops.einsum(pattern_out, keras.activations.gelu(gate, approximate=True) * up, down)

    def _per_pair(self, h, expert_ids):
        """(tokens, k, hidden): each (token, choice) with its expert's weights."""
        return self._geglu(
            h, self.gate.gather(expert_ids), self.up.gather(expert_ids),
            self.down.gather(expert_ids), "th,tkhi->tki", "tki,tkih->tkh",
        )

    def _in_expert_blocks(self, h, expert_ids, pairs):
        """(tokens, k, hidden), computing pairs grouped by expert in blocks."""
        experts, k = self.num_experts, self.num_experts_per_token
        block = 1 << max(0, math.ceil(math.log2(math.ceil(pairs / experts))))
        rows = math.ceil((pairs + experts * (block - 1)) / block) * block
        flat_ids = ops.reshape(ops.cast(expert_ids, "int32"), (-1,))
        order = ops.cast(ops.argsort(flat_ids), "int32")  # pairs sorted by expert
        sorted_ids = ops.take(flat_ids, order)
        counts = ops.sum(ops.one_hot(flat_ids, experts, dtype="int32"), axis=0)
        padded = (counts + block - 1) // block * block
        start = ops.cumsum(counts) - counts
        padded_start = ops.cumsum(padded) - padded
        rank = ops.arange(pairs, dtype="int32") - ops.take(start, sorted_ids)
        destination = ops.take(padded_start, sorted_ids) + rank  # increasing
        # Row r of the buffer holds sorted pair `source[r]`, or zeros.
        row = ops.arange(rows, dtype="int32")
        source = ops.cast(ops.searchsorted(destination, row), "int32")
        source = ops.minimum(source, pairs - 1)
        filled = ops.take(destination, source) == row
        token_of_pair = ops.take(order, source) // k
        buffer = ops.take(h, token_of_pair, axis=0)
        buffer = ops.where(filled[:, None], buffer, ops.zeros_like(buffer))
        # Each block's expert: how many experts' padded rows end before it.
        padded_end = ops.cumsum(padded)
        block_start = ops.arange(0, rows, block, dtype="int32")
        block_ids = ops.sum(ops.cast(padded_end[None, :] <= block_start[:, None], "int32"), axis=1)
        block_ids = ops.minimum(block_ids, experts - 1)
        out = self._geglu(
            ops.reshape(buffer, (rows // block, block, self.hidden_dim)),
            self.gate.gather(block_ids), self.up.gather(block_ids),
            self.down.gather(block_ids), "nbh,nhi->nbi", "nbi,nih->nbh",
        )
        out = ops.reshape(out, (rows, self.hidden_dim))
        # Back to (token, choice) order.
        by_sorted_pair = ops.take(out, destination, axis=0)
        by_pair = ops.take(by_sorted_pair, ops.argsort(order), axis=0)
        return ops.reshape(by_pair, (-1, k, self.hidden_dim))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_experts": self.num_experts,
            "num_experts_per_token": self.num_experts_per_token,
            "expert_intermediate_dim": self.expert_intermediate_dim,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }
