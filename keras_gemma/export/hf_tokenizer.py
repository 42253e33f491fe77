"""The tokenizer side of a Hugging Face folder: ``tokenizer.model``,
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
the chat template (``chat_template.jinja``, and in ``tokenizer_config.json``
for readers that predate the separate file) and ``generation_config.json``.

``tokenizer.model`` is our SentencePiece model as it is (for Gemma 4, the one
``checkpoints/tokenizer_json.py`` rebuilt from ``tokenizer.json``);
``tokenizer.json`` (``tokenizers``' form of the same BPE model, all that
Gemma 4 folders ship) is written from it, and transformers reads it first.
The chat templates are Jinja versions of ``keras_gemma.chat.chat_template``
(string contents), starting with ``bos_token`` as transformers' templates do.
"""

from keras_gemma.checkpoints.tokenizer_json import tokenizer_json_from_proto
from keras_gemma.export import files
from keras_gemma.export.chat_templates import chat_template_for



def write_tokenizer_files(folder, tokenizer, model_max_length):
    """Writes the tokenizer files and ``generation_config.json`` into ``folder``."""
    (folder / "tokenizer.model").write_bytes(tokenizer.proto)
    fast = tokenizer_json_from_proto(tokenizer.proto)
    if fast is not None:
        files.write_json(folder / "tokenizer.json", fast)
    template = chat_template_for(tokenizer)
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    specials = {
        f"{role}_token": getattr(tokenizer, f"{role}_token")
        for role in ("bos", "eos", "unk", "pad")
        if getattr(tokenizer, f"{role}_token_id", None) is not None
    }
    turn_markers = [
        getattr(tokenizer, f"{name}_token")
        for name in ("start_of_turn", "end_of_turn")
        if getattr(tokenizer, f"{name}_token_id", None) is not None
    ]
    files.write_json(folder / "special_tokens_map.json",
                {**specials, "additional_special_tokens": turn_markers})
    files.write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "GemmaTokenizer",
        **specials,
        "additional_special_tokens": turn_markers,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "legacy": False,
        "padding_side": "left",
        "model_max_length": model_max_length,
        "chat_template": template,
    })
    stops = [tokenizer.eos_token_id]
    if getattr(tokenizer, "end_of_turn_token_id", None) is not None:
        stops.append(tokenizer.end_of_turn_token_id)
    files.write_json(folder / "generation_config.json", {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": stops,
        "pad_token_id": tokenizer.pad_token_id,
    })
