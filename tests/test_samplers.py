"""Samplers on fixed logits, checked against distributions computed by hand
in numpy: support (which ids may come out) and frequencies.

Samplers turn one uniform number per row into a token by inverting the
CDF, so feeding a batch of N copies of the same logits with N evenly spaced
uniforms ("stratified" draws) gives counts within about one of N * p for
every token: a tight, deterministic frequency test.
"""

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keras_gemma import samplers

# Distinct values, argmax at index 1, unsorted so that top-k/top-p must sort.
LOGITS = np.array([1.0, 3.0, 0.5, 2.5, -1.0, 2.0, 0.0, 1.5], "float32")
DRAWS = 2000


def softmax(x):
    x = np.asarray(x, "float64")
    e = np.exp(x - x.max())
    return e / e.sum()


def stratified_uniforms(n=DRAWS):
    return ((np.arange(n) + 0.5) / n).astype("float32")


def edge_uniforms():
    """The extremes a sampler must handle: 0 and the largest float32 < 1."""
    return np.array([0.0, 1e-7, 0.5, np.nextafter(np.float32(1), np.float32(0))], "float32")


# Every draw below uses one batch shape (2000 stratified + 4 edge values),
# so eager JAX compiles each op once.
UNIFORMS = np.concatenate([stratified_uniforms(), edge_uniforms()])


def sample(sampler, logits, uniforms=UNIFORMS):
    logits = np.broadcast_to(logits, (len(uniforms), logits.shape[-1]))
    ids = sampler(
        keras.ops.convert_to_tensor(np.ascontiguousarray(logits), "float32"),
        keras.ops.convert_to_tensor(uniforms, "float32"),
    )
    ids = to_numpy(ids)
    assert ids.shape == (len(uniforms),)
    assert np.issubdtype(ids.dtype, np.integer)
    return ids


def assert_frequencies(ids, expected_probabilities, draws=DRAWS):
    """Stratified draws (the first ``draws`` ids): every count within 2 of
    draws * p, zeros included."""
    counts = np.bincount(ids[:draws], minlength=len(expected_probabilities))
    expected = draws * np.asarray(expected_probabilities)
    np.testing.assert_allclose(counts, expected, atol=2.0, rtol=0)


def top_k_probabilities(logits, k, temperature=1.0):
    order = np.argsort(-logits)[:k]
    probabilities = np.zeros(len(logits))
    probabilities[order] = softmax(logits[order] / temperature)
    return probabilities


def nucleus(logits, p, temperature=1.0):
    """Smallest set of most likely ids whose mass reaches p, by hand."""
    probabilities = softmax(logits / temperature)
    order = np.argsort(-probabilities)
    kept, mass = [], 0.0
    for i in order:
        kept.append(int(i))
        mass += probabilities[i]
        if mass >= p:
            break
    return kept


def nucleus_probabilities(logits, p, temperature=1.0):
    probabilities = softmax(logits / temperature)
    kept = nucleus(logits, p, temperature)
    result = np.zeros(len(logits))
    result[kept] = probabilities[kept] / probabilities[kept].sum()
    return result


# -- greedy ---------------------------------------------------------------


def test_greedy_picks_argmax_of_each_row():
    logits = np.random.default_rng(0).standard_normal((16, 640)).astype("float32")
    ids = samplers.GreedySampler()(
        keras.ops.convert_to_tensor(logits),
        keras.ops.convert_to_tensor(np.full(16, 0.5, "float32")),
    )
    np.testing.assert_array_equal(to_numpy(ids), logits.argmax(-1))


def test_greedy_ignores_the_uniforms():
    ids = sample(samplers.GreedySampler(), LOGITS)
    np.testing.assert_array_equal(ids, np.full(len(UNIFORMS), 1))


# -- random ---------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_random_sampler_frequencies_match_softmax(temperature):
    sampler = samplers.RandomSampler(temperature=temperature)
    ids = sample(sampler, LOGITS)
    assert_frequencies(ids, softmax(LOGITS / temperature))


def test_random_sampler_with_random_uniforms_matches_softmax():
    """Independent uniform draws: chi-square against softmax."""
    uniforms = np.random.default_rng(7).random(len(UNIFORMS), dtype="float32")
    ids = sample(samplers.RandomSampler(), LOGITS, uniforms)
    expected = len(UNIFORMS) * softmax(LOGITS)
    counts = np.bincount(ids, minlength=len(LOGITS))
    chi_square = ((counts - expected) ** 2 / expected).sum()
    # 7 degrees of freedom: P(chi2 > 30) ~ 1e-4.
    assert chi_square < 30, (counts, expected)


def test_random_sampler_handles_uniform_extremes():
    ids = sample(samplers.RandomSampler(), LOGITS)[DRAWS:]
    probabilities = softmax(LOGITS)
    cdf = np.cumsum(probabilities)
    # u = 0 gives the first id with positive mass; u -> 1 the last one.
    assert ids[0] == 0
    assert ids[-1] == len(LOGITS) - 1
    assert ids[2] == np.searchsorted(cdf, 0.5, side="right")


def test_low_temperature_is_greedy():
    for sampler in (
        samplers.RandomSampler(temperature=0.01),
        samplers.TopKSampler(k=4, temperature=0.01),
        samplers.TopPSampler(p=0.99, temperature=0.01),
    ):
        ids = sample(sampler, LOGITS)
        np.testing.assert_array_equal(ids, np.full(len(UNIFORMS), 1), err_msg=repr(sampler))


def test_high_temperature_flattens_the_distribution():
    ids = sample(samplers.RandomSampler(temperature=1000.0), LOGITS)
    assert_frequencies(ids, np.full(len(LOGITS), 1 / len(LOGITS)))


# -- top-k ----------------------------------------------------------------


# k=1: Keras warns about a softmax over one value, which is right here.
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis")
@pytest.mark.parametrize("k, temperature", [(1, 1.0), (3, 1.0), (3, 0.5), (5, 2.0)])
def test_top_k_samples_only_the_k_best_with_softmax_frequencies(k, temperature):
    sampler = samplers.TopKSampler(k=k, temperature=temperature)
    ids = sample(sampler, LOGITS)
    best = set(np.argsort(-LOGITS)[:k].tolist())
    assert set(ids.tolist()) <= best
    assert_frequencies(ids, top_k_probabilities(LOGITS, k, temperature))


def test_top_k_never_leaves_the_top_k_on_edge_uniforms():
    ids = sample(samplers.TopKSampler(k=2), LOGITS)[DRAWS:]
    assert set(ids.tolist()) <= {1, 3}
    # Most likely first: u = 0 gives the best id, u -> 1 the k-th best.
    assert ids[0] == 1 and ids[-1] == 3


def test_top_k_larger_than_vocabulary_is_the_full_distribution():
    ids = sample(samplers.TopKSampler(k=100), LOGITS)
    assert_frequencies(ids, softmax(LOGITS))


def test_top_k_over_a_large_vocabulary_with_random_uniforms():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(640).astype("float32") * 3
    uniforms = rng.random(len(UNIFORMS), dtype="float32")
    ids = sample(samplers.TopKSampler(k=10), logits, uniforms)
    best = np.argsort(-logits)[:10]
    assert set(ids.tolist()) <= set(best.tolist())
    counts = np.bincount(ids, minlength=640)[best]
    expected = len(UNIFORMS) * softmax(logits[best])
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 35, (counts, expected)  # 9 dof, P ~ 1e-4


# -- top-p ----------------------------------------------------------------


@pytest.mark.parametrize(
    "p, temperature", [(0.5, 1.0), (0.7, 1.0), (0.9, 1.0), (0.9, 0.5), (0.8, 3.0)]
)
def test_top_p_samples_only_the_nucleus(p, temperature):
    sampler = samplers.TopPSampler(p=p, temperature=temperature)
    ids = sample(sampler, LOGITS)
    kept = nucleus(LOGITS, p, temperature)
    assert set(ids.tolist()) <= set(kept)  # edge uniforms included
    assert_frequencies(ids, nucleus_probabilities(LOGITS, p, temperature))


def test_top_p_nucleus_sizes_are_what_the_test_expects():
    # Guards the test above against a degenerate choice of p: the nuclei
    # are strictly between "top token only" and "everything".
    sizes = [len(nucleus(LOGITS, p)) for p in (0.5, 0.7, 0.9)]
    assert sizes == sorted(sizes) and sizes[0] >= 2 and sizes[-1] < len(LOGITS)


@pytest.mark.parametrize("p", [1e-6, 0.01, 0.3])
def test_top_p_always_keeps_the_top_token(p):
    # softmax(LOGITS)[1] ~ 0.37 > p: the nucleus is the top token alone.
    ids = sample(samplers.TopPSampler(p=p), LOGITS)
    np.testing.assert_array_equal(ids, np.full(len(ids), 1))


@pytest.mark.parametrize("p, size", [(0.499, 2), (0.501, 3), (0.749, 3), (0.751, 4)])
def test_top_p_nucleus_is_the_smallest_set_reaching_p(p, size):
    """Four equally likely ids (0.25 each): the nucleus is the fewest ids
    whose mass reaches p, sampled uniformly."""
    ids = sample(samplers.TopPSampler(p=p), np.zeros(4, "float32"))
    chosen = np.unique(ids)
    assert len(chosen) == size, chosen
    assert_frequencies(ids, np.isin(np.arange(4), chosen) / size)


def test_top_p_one_is_the_full_distribution():
    ids = sample(samplers.TopPSampler(p=1.0), LOGITS)
    assert_frequencies(ids, softmax(LOGITS))


def test_top_p_with_k_limits_candidates_first():
    ids = sample(samplers.TopPSampler(p=0.99, k=2), LOGITS)
    assert_frequencies(ids, top_k_probabilities(LOGITS, 2))


def test_top_p_over_a_large_vocabulary():
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal(640) * 2).astype("float32")
    ids = sample(samplers.TopPSampler(p=0.7), logits)
    kept = nucleus(logits, 0.7)
    assert 2 < len(kept) < 600
    assert set(ids.tolist()) <= set(kept)
    assert_frequencies(ids, nucleus_probabilities(logits, 0.7))


def test_samplers_treat_rows_independently():
    """Different logits per row: each row follows its own distribution."""
    logits = np.stack([LOGITS, LOGITS[::-1].copy()])
    half = len(UNIFORMS) // 2
    logits = np.repeat(logits, half, axis=0)
    uniforms = np.tile(stratified_uniforms(half), 2)
    ids = sample(samplers.TopKSampler(k=3), logits, uniforms)
    assert_frequencies(ids[:half], top_k_probabilities(LOGITS, 3), draws=half)
    assert_frequencies(ids[half:], top_k_probabilities(LOGITS[::-1], 3), draws=half)


# -- construction ---------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls",
    [
        ("greedy", samplers.GreedySampler),
        ("top_k", samplers.TopKSampler),
        ("top_p", samplers.TopPSampler),
        ("random", samplers.RandomSampler),
    ],
)
def test_get_by_name(name, cls):
    sampler = samplers.get(name)
    assert type(sampler) is cls


def test_get_returns_instances_unchanged():
    sampler = samplers.TopKSampler(k=7, temperature=0.3)
    assert samplers.get(sampler) is sampler


@pytest.mark.parametrize("identifier", ["beam", "Greedy", "", None, 3, samplers.TopKSampler])
def test_get_unknown_lists_the_choices(identifier):
    with pytest.raises(ValueError, match="Unknown sampler") as info:
        samplers.get(identifier)
    for choice in ("greedy", "random", "top_k", "top_p"):
        assert choice in str(info.value)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: samplers.TopPSampler(p=0), "`p` must be a number in"),
        (lambda: samplers.TopPSampler(p=1.5), "`p` must be a number in"),
        (lambda: samplers.TopPSampler(p=-0.1), "`p` must be a number in"),
        (lambda: samplers.TopPSampler(p="0.5"), "`p` must be a number in"),
        (lambda: samplers.TopPSampler(p=0.5, k=0), "`k` must be None or an integer"),
        (lambda: samplers.TopKSampler(k=0), "`k` must be an integer >= 1"),
        (lambda: samplers.TopKSampler(k=-1), "`k` must be an integer >= 1"),
        (lambda: samplers.TopKSampler(k=2.5), "`k` must be an integer >= 1"),
        (lambda: samplers.TopKSampler(k=True), "`k` must be an integer >= 1"),
        (lambda: samplers.RandomSampler(temperature=0), "`temperature` must be a number > 0"),
        (lambda: samplers.RandomSampler(temperature=-1.0), "`temperature` must be a number > 0"),
        (lambda: samplers.TopKSampler(k=3, temperature=0), "`temperature` must be a number > 0"),
        (lambda: samplers.TopPSampler(temperature="hot"), "`temperature` must be a number > 0"),
    ],
)
def test_invalid_sampler_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_hold_the_arguments():
    assert samplers.TopKSampler(k=7, temperature=0.5).get_config() == {"k": 7, "temperature": 0.5}
    assert samplers.TopPSampler(p=0.8, k=20, temperature=2).get_config() == {
        "p": 0.8, "k": 20, "temperature": 2.0,
    }
    assert samplers.RandomSampler(temperature=3).get_config() == {"temperature": 3.0}
