"""Gemma 4 text models against implementations we did not write.

- transformers: tiny random Gemma 4 checkpoints saved by ``save_pretrained``
  (tests/data/hf_tiny_gemma4_*) with their logits and greedy continuations
  cached in tests/data/hf_gemma4_oracle.npz by
  tests/data/make_hf_gemma4_oracle.py. The three configs cover every Gemma 4
  switch: ``ple`` (per-layer embeddings, KV sharing of both layer types,
  double-wide MLP, 4 sliding : 1 full), ``moe`` (top-2-of-8 experts, K = V
  full layers with their own key/value heads; saved as the multimodal
  Gemma4ForConditionalGeneration) and ``dense`` (proportional RoPE on half
  the head, different global/sliding head sizes and RoPE bases).
- keras-hub's Gemma4Backbone, live, on the same weights (through a preset
  we write, so keras-hub reads our presets too).
"""

import json
import shutil
import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy

import keras_gemma
from keras_gemma import causal_lm

DATA = TESTS_DIR / "data"
ORACLE = np.load(DATA / "hf_gemma4_oracle.npz")
TOKEN_IDS = ORACLE["token_ids"].astype("int32")
PADDING_MASK = ORACLE["padding_mask"].astype(bool)
NAMES = ("ple", "moe", "dense")
TOLERANCE = 1e-4


def folder(name):
    return DATA / f"hf_tiny_gemma4_{name}"


_BACKBONES = {}


def backbone(name):
    if name not in _BACKBONES:
        _BACKBONES[name] = keras_gemma.GemmaBackbone.from_preset(str(folder(name)))
    return _BACKBONES[name]


def logits_of(model, token_ids=TOKEN_IDS, padding_mask=PADDING_MASK):
    hidden = model({"token_ids": token_ids, "padding_mask": padding_mask})
    return to_numpy(model.compute_logits(hidden))


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    logits = logits_of(backbone(name))
    expected = ORACLE[f"{name}_logits"]
    assert logits.shape == expected.shape
    # Every real position; the prompts (12 tokens) are 3x the window (4).
    np.testing.assert_allclose(
        logits[PADDING_MASK], expected[PADDING_MASK], atol=TOLERANCE, rtol=0
    )


def test_the_configs_exercise_their_switches():
    ple, moe, dense = (backbone(n) for n in NAMES)
    assert ple.per_layer_input_dim and ple.num_kv_shared_layers == 4
    shared = [s for s in ple.layer_specs if s.kv_source is not None]
    assert {s.sliding for s in shared} == {True, False}
    assert {s.intermediate_dim for s in shared} == {2 * ple.intermediate_dim}
    assert len(ple.init_cache(1, 8)) == ple.num_layers - 4  # no cache for shared layers
    assert moe.num_experts == 8 and moe.num_experts_per_token == 2
    full = [s for s in moe.layer_specs if not s.sliding]
    assert all(s.value_from_key and s.num_key_value_heads == 1 for s in full)
    assert dense.rope_partial_rotary_factor == 0.5
    assert {s.head_dim for s in dense.layer_specs} == {16, 24}


def test_oracle_is_sensitive_to_the_window():
    config = {**backbone("dense").get_config(), "sliding_window_size": None}
    config.pop("name")
    other = keras_gemma.GemmaBackbone.from_config(config)
    other.set_weights(backbone("dense").get_weights())
    assert np.abs(logits_of(other) - ORACLE["dense_logits"])[PADDING_MASK].max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_cached_forward_equals_uncached(name):
    model = backbone(name)
    tokens = TOKEN_IDS[:1]
    full = logits_of(model, tokens, np.ones_like(tokens, bool))
    cache = model.init_cache(1, tokens.shape[1])
    _, cache = model.compute_hidden_states(tokens[:, :5], cache=cache, cache_update_index=0)
    steps = []
    for index in range(5, tokens.shape[1]):
        hidden, cache = model.compute_hidden_states(
            tokens[:, index : index + 1], cache=cache, cache_update_index=index
        )
        steps.append(to_numpy(model.compute_logits(hidden))[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full[:, 5:], atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def causal_lms(tokenizer):
    lms = {}
    for name in NAMES:
        preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=24)
        lms[name] = keras_gemma.GemmaCausalLM(backbone(name), preprocessor)
    return lms


@pytest.mark.parametrize("length_bucket", [None, 4])
@pytest.mark.parametrize("name", NAMES)
def test_greedy_generate_matches_transformers(name, length_bucket, causal_lms, monkeypatch):
    """Batch of two prompts of different lengths against transformers'
    ``generate`` on each prompt alone. With buckets of 4 the cache starts
    at 8 positions and grows to 16, then 20 (causal_lm._cache_length),
    KV-shared layers included."""
    if length_bucket:
        monkeypatch.setattr(causal_lm, "LENGTH_BUCKET", length_bucket)
        monkeypatch.setattr(causal_lm, "PREFILL_BUCKET", length_bucket)
    lm = causal_lms[name]
    expected = ORACLE[f"{name}_greedy"]
    new = expected.shape[1]
    lengths = PADDING_MASK.sum(axis=1)
    out = lm.generate(
        {"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK},
        max_length=int(lengths.max()) + new, stop_token_ids=None,
    )
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(out["token_ids"][row, length : length + new], expected[row])


def test_score_and_stream(causal_lms):
    lm = causal_lms["ple"]
    logits = to_numpy(lm.score(TOKEN_IDS, PADDING_MASK))
    np.testing.assert_allclose(
        logits[PADDING_MASK], ORACLE["ple_logits"][PADDING_MASK], atol=TOLERANCE, rtol=0
    )
    text = "".join(lm.stream("hello world", max_length=12, stop_token_ids=None))
    assert text == lm.generate("hello world", max_length=12, stop_token_ids=None, strip_prompt=True)


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


@pytest.mark.parametrize("name", NAMES)
def test_keras_hub_gemma4_backbone_reads_our_preset(name, keras_hub, tmp_path):
    """The same weights through keras-hub's Gemma4Backbone give our logits
    (so keras-hub also reads what save_to_preset writes)."""
    ours = backbone(name)
    ours.save_to_preset(tmp_path / "preset")
    theirs = keras_hub.models.Gemma4Backbone.from_preset(str(tmp_path / "preset"))
    positions = np.broadcast_to(np.arange(TOKEN_IDS.shape[1]), TOKEN_IDS.shape)
    hidden = theirs({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK.astype("int32"),
                     "position_ids": positions.astype("int32")})
    expected = to_numpy(theirs.token_embedding(hidden, reverse=True))
    np.testing.assert_allclose(
        logits_of(ours)[PADDING_MASK], expected[PADDING_MASK], atol=TOLERANCE, rtol=0
    )
    # And our reader takes keras-hub's files back.
    again = keras_gemma.GemmaBackbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(logits_of(again), logits_of(ours), atol=1e-6, rtol=0)


# -- config, counting, int8, LoRA, sharding -----------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_and_parameter_count(name):
    model = backbone(name)
    config = model.get_config()
    again = keras_gemma.GemmaBackbone.from_config(config)
    assert again.get_config() == config
    assert [w.shape for w in again.weights] == [w.shape for w in model.weights]
    # Counted from the config alone, without building anything.
    assert keras_gemma.GemmaBackbone.count_parameters(model._config()) == model.count_params()


def _dequantized_weights(model):
    """Our int8 model's weights as float: levels times their group scales."""
    from keras_gemma.checkpoints import checkpoint_shapes

    values = {v.path: to_numpy(v) for v in model.weights}
    weights = {}
    for path, shape in checkpoint_shapes(model).items():
        if path in values and values[path].dtype != np.int8:
            weights[path] = values[path]
            continue
        levels = values.get(path + "_int8", values.get(path))
        scales = values[path.removesuffix("/embeddings").removesuffix("/kernel")
                        + ("/embeddings_scale" if path.endswith("embeddings") else "/kernel_scale")]
        if path.endswith("embeddings"):  # (rows, cols), groups along cols
            weights[path] = (levels.reshape(*scales.shape, -1) * scales[..., None]).reshape(shape)
        elif levels.ndim == 3:  # experts (experts, in, out), groups along in
            e, i, o = levels.shape
            grouped = levels.reshape(e, scales.shape[1], -1, o) * scales[:, :, None, :]
            weights[path] = grouped.reshape(shape)
        else:  # Dense, stored (out, in), groups along in
            out, inp = levels.shape
            grouped = levels.reshape(out, scales.shape[1], -1) * scales[..., None]
            weights[path] = grouped.reshape(out, inp).T
    return weights


def test_int8_covers_experts_and_per_layer_table():
    """Every matrix, the experts and both embedding tables become int8, and
    the int8 model computes exactly what its dequantized weights do."""
    from keras_gemma.checkpoints import assign_weights

    for name in ("ple", "moe"):
        lm = keras_gemma.GemmaCausalLM.from_preset(str(folder(name)), quantize="int8")
        model = lm.backbone
        assert model.is_quantized
        int8 = {v.path for v in model.weights if v.dtype == "int8"}
        if name == "moe":
            assert {f"decoder_block_0/experts/{k}/kernel_int8" for k in ("gate", "up", "down")} <= int8
        else:
            assert "per_layer_embedding/token_embedding/embeddings_int8" in int8
        # No float matrix left: only norms, scalars and scales stay float.
        assert not [v.path for v in model.weights
                    if v.dtype != "int8" and len(v.shape) >= 2 and "scale" not in v.path]
        reference = keras_gemma.GemmaBackbone.from_preset(str(folder(name)))
        assign_weights(reference, _dequantized_weights(model), "dequantized")
        np.testing.assert_allclose(logits_of(model), logits_of(reference), atol=1e-4, rtol=0)
        assert np.abs(logits_of(model) - ORACLE[f"{name}_logits"])[PADDING_MASK].max() < 2.0


@pytest.mark.parametrize("name", ("ple", "moe"))
def test_lora_targets_skip_missing_projections(name):
    """Attention and dense feed-forward targets; layers without a key or
    value projection (KV-shared, K = V) are skipped; experts stay frozen."""
    model = keras_gemma.GemmaBackbone.from_preset(str(folder(name)))
    model.enable_lora(2, target=("query", "key", "value", "output", "gate", "up", "down"))
    trainable = {v.path.rsplit("/", 1)[0] for v in model.trainable_weights}
    specs = model.layer_specs
    keys = [s.index for s in specs if s.kv_source is None]
    values = [s.index for s in specs if s.kv_source is None and not s.value_from_key]
    assert {p for p in trainable if p.endswith("attention/key")} == {
        f"decoder_block_{i}/attention/key" for i in keys}
    assert {p for p in trainable if p.endswith("attention/value")} == {
        f"decoder_block_{i}/attention/value" for i in values}
    assert len([p for p in trainable if p.endswith("attention/query")]) == model.num_layers
    assert not any("experts" in p or "per_layer" in p for p in trainable)


def test_lora_fit_on_the_expert_mixture(tokenizer):
    model = keras_gemma.GemmaBackbone.from_preset(str(folder("moe")))
    model.enable_lora(2, target=("query", "value", "down"))
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=8)
    lm = keras_gemma.GemmaCausalLM(model, preprocessor)
    lm.compile(optimizer="adam")
    before = logits_of(model)
    history = lm.fit(["hello world", "the quick brown fox"], batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = logits_of(model)
    assert np.abs(after - before).max() > 0  # the adapter trained
    model.merge_lora()
    np.testing.assert_allclose(logits_of(model), after, atol=1e-4, rtol=0)


def test_layout_map_splits_experts_over_the_model_axis():
    import keras

    if keras.config.backend() != "jax":
        pytest.skip("keras.distribution layouts are JAX-only")
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((1, len(devices)), ("batch", "model"), devices)
    layout_map = keras_gemma.GemmaBackbone.get_layout_map(mesh)
    assert tuple(layout_map["decoder_block_3/experts/gate/kernel"].axes) == ("model", None, None)
    assert tuple(layout_map["decoder_block_0/experts/down/kernel"].axes) == ("model", None, None)
    assert tuple(layout_map["per_layer_embedding/token_embedding/embeddings"].axes) == ("model", None)
    assert tuple(layout_map["decoder_block_1/attention/query/kernel"].axes) == (None, "model")


# -- bad input -------------------------------------------------------------------


def _copy(name, tmp_path):
    import shutil

    target = tmp_path / name
    shutil.copytree(folder(name), target)
    return target


def _write_safetensors(path, tensors):
    """A minimal safetensors file (numpy float32 tensors)."""
    import json
    import struct

    header, offset, blobs = {}, 0, []
    for key, array in tensors.items():
        data = np.ascontiguousarray(array, "<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_folder_with_only_vision_weights(tmp_path):
    target = _copy("moe", tmp_path)
    (target / "model.safetensors").unlink()
    _write_safetensors(target / "model.safetensors", {
        "model.vision_tower.encoder.layers.0.mlp.up_proj.linear.weight": np.zeros((4, 4)),
        "model.embed_vision.embedding_projection.weight": np.zeros((4, 4)),
    })
    with pytest.raises(ValueError, match="no language-model weights"):
        keras_gemma.GemmaBackbone.from_preset(str(target))


def test_gemma3n_is_rejected_by_name(tmp_path):
    import json

    target = _copy("dense", tmp_path)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "model_type": "gemma3n"}))
    with pytest.raises(ValueError, match="Gemma 3n.*not support"):
        keras_gemma.GemmaBackbone.from_preset(str(target))


SMALL = dict(vocabulary_size=64, num_layers=4, num_query_heads=2, num_key_value_heads=1,
             hidden_dim=16, intermediate_dim=32, head_dim=8, sliding_window_size=4,
             layer_types=["sliding_attention"] * 3 + ["full_attention"])


@pytest.mark.parametrize("overrides, message", [
    # Layers 2 and 3 share, but the one non-shared... layer 3 is full and
    # layers 0-1 are sliding: no full layer to share from.
    (dict(num_kv_shared_layers=2), "none of the 2 non-shared layers is a 'full_attention'"),
    (dict(num_kv_shared_layers=4), "must be smaller than `num_layers`"),
    (dict(num_experts=4, num_experts_per_token=5, expert_intermediate_dim=8),
     r"`num_experts_per_token` \(top-k\) must be an integer from 1 to `num_experts` \(4\)"),
    (dict(layer_types=["sliding_attention", "full_attention"]),
     "`layer_types` has 2 entries but the model has 4 layers"),
    (dict(layer_types=["sliding_attention"] * 3 + ["global"]), "unknown layer types"),
])
def test_impossible_configs_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        keras_gemma.GemmaBackbone(**{**SMALL, **overrides})
    with pytest.raises(ValueError, match=message):
        keras_gemma.GemmaBackbone.count_parameters({**SMALL, **overrides})


def test_transformers_config_with_wrong_layer_types_length(tmp_path):
    import json

    target = _copy("dense", tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["layer_types"] = config["layer_types"][:-1]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="`layer_types` has 5 entries but the model has 6"):
        keras_gemma.GemmaBackbone.from_preset(str(target))


def test_convert_round_trip(tmp_path):
    """A transformers folder converted to a preset loads back with the same
    logits (multimodal layout, experts included)."""
    keras_gemma.convert(str(folder("moe")), str(tmp_path / "converted"))
    again = keras_gemma.GemmaBackbone.from_preset(str(tmp_path / "converted"))
    np.testing.assert_allclose(logits_of(again), logits_of(backbone("moe")), atol=1e-6, rtol=0)


def test_folder_with_only_tokenizer_json_reads_it(tmp_path):
    """Gemma 4 folders ship tokenizer.json only; its size must fit the config."""
    target = _copy("dense", tmp_path)
    (target / "tokenizer.model").unlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DATA / "gemma4_tokenizer" / name, target / name)
    with pytest.raises(ValueError, match="different models"):
        keras_gemma.GemmaTokenizer.from_preset(str(target))
    pieces = len(json.loads((target / "tokenizer.json").read_text())["model"]["vocab"])
    config = json.loads((target / "config.json").read_text())
    config["vocab_size"] = pieces
    (target / "config.json").write_text(json.dumps(config))
    tokenizer = keras_gemma.GemmaTokenizer.from_preset(str(target))
    assert tokenizer.vocabulary_size() == pieces
    assert tokenizer.id_to_token(tokenizer.end_of_turn_token_id) == "<turn|>"


def test_expert_blocks_equal_per_pair_experts():
    """The prompt path (pairs sorted into per-expert blocks) and the decode
    path (weights gathered per pair) compute the same mixture."""
    from keras import ops

    layer = backbone("moe").decoder_blocks[1].experts
    rng = np.random.default_rng(0)
    for tokens in (3, 5, 37):
        h = ops.convert_to_tensor(rng.standard_normal((tokens, 32)).astype("float32"))
        ids, _ = layer.route(h)
        per_pair = to_numpy(layer._per_pair(h, ids))
        blocks = to_numpy(layer._in_expert_blocks(h, ids, tokens * layer.num_experts_per_token))
        np.testing.assert_allclose(blocks, per_pair, atol=1e-5, rtol=0)
