"""keras-hub's ``keras_hub.models`` names, for ``import keras_gemma as keras_hub``.

keras_gemma has one class per concept for every Gemma generation, so the
Gemma 3 and Gemma 4 names are that one set of classes under keras-hub's
names. Where keras-hub's Gemma 3/4 constructors take other arguments (a
vision encoder, an image converter, ``use_post_ffw_norm``...), the alias
translates them, and refuses the multimodal ones with an error that says so
(keras_gemma is text-only).

Example:

```python
import keras_gemma as keras_hub

gemma_lm = keras_hub.models.Gemma3CausalLM.from_preset("gemma3_270m")
gemma_lm.compile(sampler=keras_hub.samplers.TopKSampler(k=5, seed=2))
gemma_lm.generate("The capital of France is", max_length=32)
```
"""

import keras

from keras_gemma.backbone import GemmaBackbone
from keras_gemma.causal_lm import GemmaCausalLM
from keras_gemma.preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.tokenizer import GemmaTokenizer

__all__ = [
    "Backbone",
    "CausalLM",
    "CausalLMPreprocessor",
    "Tokenizer",
    "GemmaBackbone",
    "GemmaCausalLM",
    "GemmaCausalLMPreprocessor",
    "GemmaTokenizer",
    "Gemma3Backbone",
    "Gemma3CausalLM",
    "Gemma3CausalLMPreprocessor",
    "Gemma3Tokenizer",
    "Gemma4Backbone",
    "Gemma4CausalLM",
    "Gemma4CausalLMPreprocessor",
    "Gemma4Tokenizer",
]


def _register(cls):
    return keras.saving.register_keras_serializable(package="keras_gemma")(cls)


# -- the task: one class, whichever argument order -----------------------------

# GemmaCausalLM accepts keras-hub's (preprocessor, backbone) order too.
Gemma3CausalLM = GemmaCausalLM
Gemma4CausalLM = GemmaCausalLM


# -- backbones ------------------------------------------------------------------

# Arguments only keras-hub's Gemma3Backbone has; any of them means the call
# uses keras-hub's argument names.
_KERAS_HUB_GEMMA3_ONLY = {
    "image_size", "query_head_dim_normalize", "use_post_ffw_norm",
    "use_sliding_window_attention", "local_rope_scaling_factor",
    "global_rope_scaling_factor", "vision_encoder", "use_bidirectional_attention",
    "is_embedding_model", "pooling_intermediate_dim", "embedding_dim",
}


@_register
class Gemma3Backbone(GemmaBackbone):
    """``GemmaBackbone`` taking keras-hub's ``Gemma3Backbone`` arguments too.

    With keras-hub's names (``image_size``, ``use_post_ffw_norm``,
    ``use_sliding_window_attention``, ``global_rope_scaling_factor``...)
    they are translated to ours, exactly as a keras-hub ``config.json`` is
    on load; otherwise the arguments are ``GemmaBackbone``'s. Vision,
    embedding-model and bidirectional options are refused (text-only).

    Example:

    ```python
    backbone = Gemma3Backbone(
        vocabulary_size=640, image_size=896, num_layers=2, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64,
        head_dim=16, use_post_ffw_norm=True, use_post_attention_norm=True,
        use_sliding_window_attention=True, sliding_window_size=4,
    )
    ```
    """

    def __init__(self, *args, **kwargs):
        if args:
            raise TypeError(
                "Gemma3Backbone takes keyword arguments only (keras-hub's "
                "positional order differs from GemmaBackbone's)."
            )
        if _KERAS_HUB_GEMMA3_ONLY & set(kwargs):
            kwargs = _from_keras_hub_gemma3(kwargs)
        super().__init__(**kwargs)


def _from_keras_hub_gemma3(kwargs):
    from keras_gemma.checkpoints.keras_hub import config_from_keras_hub

    kwargs = dict(kwargs)
    for flag in ("use_bidirectional_attention", "is_embedding_model"):
        if kwargs.pop(flag, False):
            raise ValueError(
                f"Gemma3Backbone({flag}=True) is not supported: keras_gemma "
                "builds causal text models only."
            )
    if kwargs.pop("vision_encoder", None) is not None:
        raise ValueError(
            "Gemma3Backbone(vision_encoder=...) is not supported: keras_gemma "
            "builds Gemma 3's text model only, without a vision encoder. Pass "
            "vision_encoder=None (a full checkpoint's text model loads with from_preset)."
        )
    kwargs.pop("image_size", None)  # only sizes the vision encoder
    kwargs.pop("pooling_intermediate_dim", None)
    kwargs.pop("embedding_dim", None)
    keep = {k: kwargs.pop(k) for k in ("dtype", "name", "trainable") if k in kwargs}
    ours = config_from_keras_hub(
        {"class_name": "Gemma3Backbone", "config": kwargs}, "Gemma3Backbone(...)"
    )
    known = set(ours) | {
        "use_query_key_norm", "query_head_dim_normalize", "use_post_ffw_norm",
        "use_sliding_window_attention", "sliding_window_size",
        "global_rope_scaling_factor", "local_rope_scaling_factor", "vision_encoder",
    }
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"Gemma3Backbone got unexpected argument(s) {unknown}.")
    return {**ours, **keep}


# Gemma 4 presets load through from_preset; its constructor is GemmaBackbone's.
Gemma4Backbone = GemmaBackbone


# -- preprocessors and tokenizers: text-only ------------------------------------


def _text_only_preprocessor(name, media_converters, ignored):
    def __init__(self, tokenizer, *args, **kwargs):
        for converter in media_converters:
            if kwargs.pop(converter, None) is not None:
                raise ValueError(
                    f"{name}({converter}=...) is not supported: keras_gemma is "
                    "text-only. Drop the converter; prompts are strings."
                )
        for argument in ignored:
            kwargs.pop(argument, None)  # sizes of image/audio inputs
        GemmaCausalLMPreprocessor.__init__(self, tokenizer, *args, **kwargs)

    doc = (
        f"``GemmaCausalLMPreprocessor`` under keras-hub's name, taking its "
        f"arguments; {', '.join(media_converters)} must be None (text-only)."
    )
    cls = type(name, (GemmaCausalLMPreprocessor,), {"__init__": __init__, "__doc__": doc})
    cls.__module__ = __name__
    return _register(cls)


Gemma3CausalLMPreprocessor = _text_only_preprocessor(
    "Gemma3CausalLMPreprocessor",
    ("image_converter",),
    ("max_images_per_prompt", "num_vision_tokens_per_image"),
)
Gemma4CausalLMPreprocessor = _text_only_preprocessor(
    "Gemma4CausalLMPreprocessor",
    ("image_converter", "audio_converter", "video_converter"),
    ("max_images_per_prompt", "num_vision_tokens_per_image",
     "max_audio_clips_per_prompt", "num_audio_tokens_per_clip",
     "audio_input_feat_size", "num_frames_per_video",
     "num_vision_tokens_per_frame", "video_fps"),
)


def _tokenizer_alias(name, flags):
    def __init__(self, proto, **kwargs):
        unknown = sorted(set(kwargs) - set(flags))
        if unknown:
            raise TypeError(f"{name} got unexpected argument(s) {unknown}.")
        # The flags say whether image/audio placeholder tokens exist; the
        # vocabulary is the same either way and prompts here are text.
        GemmaTokenizer.__init__(self, proto)

    doc = f"``GemmaTokenizer`` under keras-hub's name; accepts {', '.join(flags)}."
    cls = type(name, (GemmaTokenizer,), {"__init__": __init__, "__doc__": doc})
    cls.__module__ = __name__
    return _register(cls)


Gemma3Tokenizer = _tokenizer_alias("Gemma3Tokenizer", ("has_vision_tokens",))
Gemma4Tokenizer = _tokenizer_alias(
    "Gemma4Tokenizer", ("has_vision_tokens", "has_audio_tokens", "has_video_tokens")
)


# -- keras-hub's base classes: from_preset for any Gemma preset -----------------


class CausalLM:
    """``keras_hub.models.CausalLM.from_preset``: a ``GemmaCausalLM``."""

    def __init__(self, *args, **kwargs):
        raise TypeError(
            f"keras_gemma.models.{type(self).__name__} is only a from_preset "
            "entry point; construct the Gemma class (GemmaCausalLM, "
            "GemmaBackbone, ...) instead."
        )

    @staticmethod
    def from_preset(preset, load_weights=True, **kwargs):
        return GemmaCausalLM.from_preset(preset, load_weights=load_weights, **kwargs)


class Backbone(CausalLM):
    """``keras_hub.models.Backbone.from_preset``: a ``GemmaBackbone``."""

    @staticmethod
    def from_preset(preset, load_weights=True, **kwargs):
        return GemmaBackbone.from_preset(preset, load_weights=load_weights, **kwargs)


class CausalLMPreprocessor(CausalLM):
    """``keras_hub.models.CausalLMPreprocessor.from_preset``."""

    @staticmethod
    def from_preset(preset, **kwargs):
        return GemmaCausalLMPreprocessor.from_preset(preset, **kwargs)


class Tokenizer(CausalLM):
    """``keras_hub.tokenizers.Tokenizer.from_preset``: a ``GemmaTokenizer``."""

    @staticmethod
    def from_preset(preset, **kwargs):
        return GemmaTokenizer.from_preset(preset, **kwargs)
