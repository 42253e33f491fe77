"""``GemmaTextEmbedder``: EmbeddingGemma, texts -> unit-length vectors.

The pipeline is sentence-transformers' for google/embeddinggemma-300m: a
Gemma 3 backbone with bidirectional attention, the mean of the final hidden
states over the real tokens (prompt included), two linear projections
without bias or activation (768 -> 3072 -> 768), then L2 normalization.
Matryoshka (MRL) truncation keeps the first ``dim`` values of that vector and
normalizes again, as the model card says.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_gemma import backend
from keras_gemma.backbone import GemmaBackbone

# The task prompts of EmbeddingGemma's model card and its
# config_sentence_transformers.json; a folder's own prompts replace them.
MODEL_CARD_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}
# The model card's document prompt when the document has a title.
DOCUMENT_WITH_TITLE = "title: {title} | text: "
# Sequences are padded to a multiple of this, so batches of similar lengths
# share one compiled program.
LENGTH_BUCKET = 32
_ACTIVATIONS = ("linear", "tanh")


def matryoshka_sizes(dim):
    """The embedding sizes offered for a ``dim``-wide output.

    ``dim`` and the powers of two below it down to ``min(128, dim // 4)``:
    768 -> (768, 512, 256, 128), EmbeddingGemma's sizes.
    """
    smallest = min(128, dim // 4)
    sizes = [dim]
    power = 1 << (dim.bit_length() - 1)
    while power >= max(smallest, 1):
        if power < dim:
            sizes.append(power)
        power //= 2
    return tuple(sizes)


class GemmaTextEmbedder(keras.Model):
    """Text embeddings from a bidirectional Gemma (EmbeddingGemma).

    Calling the model on ``{"token_ids", "padding_mask"}`` returns the
    full-size, L2-normalized float32 embeddings (batch, dim). ``embed``
    takes strings and returns numpy arrays.

    Args:
        backbone: a ``keras_gemma.GemmaBackbone`` built with
            ``use_bidirectional_attention=True``.
        projection_dims: output sizes of the dense projections after
            pooling, e.g. ``(3072, 768)``; empty for none.
        tokenizer: a ``keras_gemma.GemmaTokenizer`` (needed by ``embed``).
        sequence_length: longest token sequence (``<bos>`` and ``<eos>``
            included); longer texts are cut, as sentence-transformers does.
        prompts: task name -> prompt prefix (``MODEL_CARD_PROMPTS`` by
            default), used by ``embed(task=...)``.
        normalize: L2-normalize the output (EmbeddingGemma does).
        matryoshka_dims: the sizes ``embed(dim=...)`` accepts; by default
            ``matryoshka_sizes(output size)``.
        projection_use_bias, projection_activation: the projections' bias
            and activation (``"linear"`` or ``"tanh"``).
        add_bos, add_eos: put ``<bos>`` / ``<eos>`` around each text
            (EmbeddingGemma's tokenizer adds both).

    Example:

    ```python
    import keras_gemma

    backbone = keras_gemma.GemmaBackbone(
        vocabulary_size=640, num_layers=2, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64,
        head_dim=16, use_query_key_norm=True, use_post_attention_norm=True,
        use_post_feedforward_norm=True, sliding_window_size=4,
        sliding_window_pattern=2, use_bidirectional_attention=True,
    )
    tokenizer = keras_gemma.GemmaTokenizer("tests/data/test_vocabulary.spm")
    embedder = keras_gemma.GemmaTextEmbedder(
        backbone, projection_dims=(64, 32), tokenizer=tokenizer)
    vectors = embedder.embed(["hello world", "good morning"], dim=16)
    vectors.shape  # (2, 16), each row of unit length
    queries = embedder.embed("what is Keras?", task="query")  # shape (32,)

    # EmbeddingGemma itself, from its Hugging Face folder:
    # embedder = keras_gemma.GemmaTextEmbedder.from_preset("embeddinggemma-300m/")
    ```
    """

    def __init__(
        self,
        backbone,
        projection_dims=(3072, 768),
        tokenizer=None,
        sequence_length=2048,
        prompts=None,
        normalize=True,
        matryoshka_dims=None,
        projection_use_bias=False,
        projection_activation="linear",
        add_bos=True,
        add_eos=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not getattr(backbone, "use_bidirectional_attention", False):
            raise ValueError(
                "GemmaTextEmbedder needs a backbone with bidirectional "
                "attention (GemmaBackbone(..., use_bidirectional_attention="
                "True)); this one is causal, a language model's. Use "
                "GemmaCausalLM for it."
            )
        if projection_activation not in _ACTIVATIONS:
            raise ValueError(
                f"`projection_activation` must be one of {_ACTIVATIONS}, got "
                f"{projection_activation!r}."
            )
        self.backbone = backbone
        self.projection_dims = tuple(int(d) for d in projection_dims)
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        if self.sequence_length < 3:
            raise ValueError(
                f"`sequence_length` must be at least 3, got {sequence_length}."
            )
        self.prompts = dict(MODEL_CARD_PROMPTS if prompts is None else prompts)
        self.normalize = bool(normalize)
        self.projection_use_bias = bool(projection_use_bias)
        self.projection_activation = projection_activation
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.output_dim = (
            self.projection_dims[-1] if self.projection_dims else backbone.hidden_dim
        )
        self.matryoshka_dims = tuple(
            int(d) for d in (matryoshka_dims or matryoshka_sizes(self.output_dim))
        )
        if self.output_dim not in self.matryoshka_dims or any(
            not 0 < d <= self.output_dim for d in self.matryoshka_dims
        ):
            raise ValueError(
                f"`matryoshka_dims` {self.matryoshka_dims} must include the "
                f"output size {self.output_dim} and no larger size."
            )

        self.projections = []
        width = backbone.hidden_dim
        for i, units in enumerate(self.projection_dims):
            layer = keras.layers.Dense(
                units,
                use_bias=self.projection_use_bias,
                activation=projection_activation,
                dtype=backbone.dtype_policy,
                name=f"projection_{i}",
            )
            layer.build((None, width))
            self.projections.append(layer)
            width = units
        self._embed_function = None
        self.built = True

    # -- forward -------------------------------------------------------------

    def call(self, inputs, training=False):
        """``{"token_ids", "padding_mask"}`` (batch, time) -> (batch, dim)."""
        # Pooled in float32: a bfloat16 sum over 2048 tokens loses digits.
        hidden = ops.cast(self.backbone(inputs, training=training), "float32")
        mask = ops.cast(inputs["padding_mask"], "float32")[:, :, None]
        # Mean over the real tokens, as sentence-transformers' Pooling.
        total = ops.sum(hidden * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), 1e-9)
        x = total / count
        for layer in self.projections:
            x = layer(x)
        x = ops.cast(x, "float32")
        return _l2_normalize(x) if self.normalize else x

    # -- embedding texts -------------------------------------------------------

    def embed(self, texts, dim=None, task=None, prompt=None, batch_size=32):
        """Embeds a string (-> shape ``(dim,)``) or a list of strings
        (-> ``(len(texts), dim)``), as float32 numpy.

        Args:
            dim: one of ``matryoshka_dims`` (for EmbeddingGemma 768, 512, 256
                or 128); the first ``dim`` values are kept and normalized
                again. Default: the full size.
            task: a name in ``prompts`` (e.g. ``"query"``, ``"document"``,
                ``"STS"``, ``"Clustering"``): its prompt goes before each text.
            prompt: a literal prefix instead, e.g. ``"task: fact checking |
                query: "``. At most one of ``task`` and ``prompt``.
            batch_size: texts per forward pass.
        """
        single = isinstance(texts, str)
        texts = _check_texts([texts] if single else texts)
        dim = self._check_dim(dim)
        prefix = self._prompt(task, prompt)
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        embeddings = self._embed_texts([prefix + t for t in texts], batch_size)
        if dim < self.output_dim:
            embeddings = embeddings[:, :dim]
            if self.normalize:
                embeddings = _l2_normalize_numpy(embeddings)
        return embeddings[0] if single else embeddings

    def embed_query(self, texts, dim=None, **kwargs):
        """``embed`` with the model card's search-query prompt."""
        return self.embed(texts, dim=dim, task="query", **kwargs)

    def embed_document(self, texts, titles=None, dim=None, **kwargs):
        """``embed`` with the model card's document prompt,
        ``"title: {title} | text: "`` (``title: none`` without titles)."""
        if titles is None:
            return self.embed(texts, dim=dim, task="document", **kwargs)
        single = isinstance(texts, str)
        texts = _check_texts([texts] if single else texts)
        titles = [titles] if isinstance(titles, str) else list(titles)
        if len(titles) != len(texts):
            raise ValueError(
                f"Got {len(titles)} titles for {len(texts)} documents; give "
                "one title (or None) per document."
            )
        with_titles = [
            DOCUMENT_WITH_TITLE.format(title=title or "none") + text
            for title, text in zip(titles, texts)
        ]
        embeddings = self.embed(with_titles, dim=dim, **kwargs)
        return embeddings[0] if single else embeddings

    def tokenize(self, texts):
        """Token ids per text: ``<bos>`` text ``<eos>``, cut to ``sequence_length``."""
        if self.tokenizer is None:
            raise ValueError(
                "This embedder has no tokenizer; pass `tokenizer=` or load it "
                "with GemmaTextEmbedder.from_preset."
            )
        specials = self.add_bos + self.add_eos
        rows = []
        for ids in self.tokenizer.tokenize(list(texts)):
            ids = list(ids[: self.sequence_length - specials])
            if self.add_bos:
                ids.insert(0, self.tokenizer.bos_token_id)
            if self.add_eos:
                ids.append(self.tokenizer.eos_token_id)
            rows.append(ids)
        return rows

    def _embed_texts(self, texts, batch_size):
        rows = self.tokenize(texts)
        output = np.zeros((len(rows), self.output_dim), "float32")
        # Longest first, so that each batch pads little.
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in _progress(batches, "Embedding"):
            length = max(len(rows[i]) for i in batch)
            length = min(-(-length // LENGTH_BUCKET) * LENGTH_BUCKET, self.sequence_length)
            token_ids = np.full((len(batch), length), self.tokenizer.pad_token_id, "int32")
            padding_mask = np.zeros((len(batch), length), "bool")
            for j, i in enumerate(batch):
                token_ids[j, : len(rows[i])] = rows[i]
                padding_mask[j, : len(rows[i])] = True
            result = self._compiled_embed()(token_ids, padding_mask)
            output[batch] = np.asarray(ops.convert_to_numpy(result), "float32")
        return output

    def _compiled_embed(self):
        if self._embed_function is None:
            def embed_batch(token_ids, padding_mask):
                return self({"token_ids": token_ids, "padding_mask": padding_mask})

            self._embed_function = backend.compile_inference(self, embed_batch)
        return self._embed_function

    def _check_dim(self, dim):
        if dim is None:
            return self.output_dim
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or (
            dim not in self.matryoshka_dims
        ):
            raise ValueError(
                f"`dim` must be one of the Matryoshka sizes "
                f"{', '.join(map(str, self.matryoshka_dims))} of this model, "
                f"got {dim!r}."
            )
        return int(dim)

    def _prompt(self, task, prompt):
        if task is not None and prompt is not None:
            raise ValueError("Pass `task` or `prompt`, not both.")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}.")
            return prompt
        if task is None:
            return ""
        if task not in self.prompts:
            raise ValueError(
                f"Unknown task {task!r}. This model's tasks: "
                f"{', '.join(self.prompts)}; or pass your own `prompt=`."
            )
        return self.prompts[task]

    # -- presets and config ----------------------------------------------------

    @staticmethod
    def count_parameters(backbone_config, projection_dims, projection_use_bias=False):
        """Parameters of an embedder with this config, without building it."""
        total = GemmaBackbone.count_parameters(backbone_config)
        width = backbone_config["hidden_dim"]
        for units in projection_dims:
            total += width * units + (units if projection_use_bias else 0)
            width = units
        return total

    @classmethod
    def from_preset(cls, preset, load_weights=True, dtype=None, **kwargs):
        """An embedder from a preset name or a sentence-transformers folder
        (e.g. a download of google/embeddinggemma-300m: ``config.json``,
        ``model.safetensors``, ``modules.json``, ``2_Dense/``, ``3_Dense/``
        ...). Its prompts, pooling, projections and sequence length are read
        from the folder. ``dtype``: as ``GemmaCausalLM.from_preset``.
        """
        from keras_gemma import preset_io

        return preset_io.load_text_embedder(
            preset, load_weights=load_weights, dtype=dtype, **kwargs
        )

    def get_config(self):
        return {
            "name": self.name,
            "backbone": self.backbone.get_config(),
            "projection_dims": list(self.projection_dims),
            "sequence_length": self.sequence_length,
            "prompts": dict(self.prompts),
            "normalize": self.normalize,
            "matryoshka_dims": list(self.matryoshka_dims),
            "projection_use_bias": self.projection_use_bias,
            "projection_activation": self.projection_activation,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = config.pop("backbone")
        if isinstance(backbone, dict):
            backbone = GemmaBackbone.from_config(backbone)
        return cls(backbone=backbone, **config)


def _check_texts(texts):
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)):
        raise TypeError(
            f"`texts` must be a string or a list of strings, got {type(texts).__name__}."
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"`texts` must be strings; item {i} is a {type(text).__name__}."
            )
        if not text.strip():
            raise ValueError(
                f"Text {i} is empty; an empty text has no meaning to embed. "
                "Remove it or give it some content."
            )
    return list(texts)


def _l2_normalize(x):
    # As torch.nn.functional.normalize (sentence-transformers' Normalize).
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, 1e-12)


def _l2_normalize_numpy(x):
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _progress(items, description):
    """Iterates, with a progress bar on stderr when there is much to do."""
    if len(items) < 4:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description, transient=True, console=Console(stderr=True))
