"""Ridge, its CV, the split protocols and the correlation measures.

References: scikit-learn's Ridge on standardised features (rtol 1e-8, float64
solves of differently ordered systems), scipy.stats, and synthetic data whose
answer is known.
"""
import io

import numpy as np
import pytest
import scipy.stats
from sklearn.linear_model import Ridge

from grepq_jax.evaluation import correlation
from grepq_jax.evaluation import regression


def _linear_data(rng, num, dim, noise):
    weights = rng.normal(size=dim)
    x = rng.normal(size=(num, dim)) * rng.uniform(0.5, 5.0, size=dim) + 3.0
    return x, x @ weights + noise * rng.normal(size=num)


# --- ridge ----------------------------------------------------------------

@pytest.mark.parametrize("num, dim", [(40, 6), (12, 30)])  # primal and dual systems
def test_fit_ridge_matches_sklearn_on_standardised_features(num, dim):
    rng = np.random.default_rng(0)
    x, y = _linear_data(rng, num, dim, noise=0.5)
    model = regression.fit_ridge(x, y, alpha=3.0)
    z = (x - x.mean(0)) / x.std(0)
    reference = Ridge(alpha=3.0).fit(z, y)
    np.testing.assert_allclose(model.weights, reference.coef_, rtol=1e-8, atol=1e-10)
    x_new = rng.normal(size=(5, dim))
    np.testing.assert_allclose(model.predict(x_new),
                               reference.predict((x_new - x.mean(0)) / x.std(0)), rtol=1e-8)


def test_constant_feature_is_ignored_not_divided_by_zero():
    rng = np.random.default_rng(1)
    x, y = _linear_data(rng, 30, 3, noise=0.1)
    x = np.concatenate([x, np.full((30, 1), 7.0)], axis=1)
    model = regression.fit_ridge(x, y, alpha=1.0)
    assert np.all(np.isfinite(model.predict(x))) and model.weights[-1] == 0.0


def test_ridge_cv_on_known_linear_answer():
    rng = np.random.default_rng(2)
    x, y = _linear_data(rng, 700, 10, noise=0.05)
    model = regression.fit_ridge_cv(x[:200], y[:200], (0.1, 1, 10, 100), folds=5, seed=0)
    pred = model.predict(x[200:])
    assert model.alpha == 0.1  # Nearly noiseless: the least shrinkage wins.
    assert correlation.srocc(pred, y[200:]) > 0.99
    assert correlation.plcc(pred, y[200:], "none") > 0.99


def test_ridge_cv_on_pure_noise():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(560, 40)), rng.normal(size=560)
    model = regression.fit_ridge_cv(x[:60], y[:60], (0.1, 1, 10, 100), folds=5, seed=0)
    assert model.alpha == 100  # Nothing to learn: the most shrinkage wins.
    assert abs(correlation.srocc(model.predict(x[60:]), y[60:])) < 0.15


def test_ridge_round_trip_through_npz():
    rng = np.random.default_rng(4)
    x, y = _linear_data(rng, 20, 4, noise=0.1)
    model = regression.fit_ridge(x, y, alpha=2.0)
    buffer = io.BytesIO()
    np.savez(buffer, **model.to_arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as arrays:
        loaded = regression.RidgeRegressor.from_arrays(arrays)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.alpha == 2.0


# --- protocols ------------------------------------------------------------

def test_data_efficient_protocol_is_seeded_and_splits_are_disjoint():
    rng = np.random.default_rng(5)
    x, y = _linear_data(rng, 120, 8, noise=0.3)
    kwargs = dict(num_train=(25, 50), num_splits=4, mapping="poly3",
                  alphas=(0.1, 1, 10, 100), folds=5)
    first = regression.data_efficient_protocol(x, y, seed=11, **kwargs)
    again = regression.data_efficient_protocol(x, y, seed=11, **kwargs)
    other = regression.data_efficient_protocol(x, y, seed=12, **kwargs)
    for n in (25, 50):
        result = first[n]
        assert result.train_indices.shape == (4, n) and result.srocc.shape == (4,)
        for train in result.train_indices:
            assert len(np.unique(train)) == n and train.max() < 120
        np.testing.assert_array_equal(result.train_indices, again[n].train_indices)
        np.testing.assert_array_equal(result.srocc, again[n].srocc)
        assert not np.array_equal(result.train_indices, other[n].train_indices)
        summary = result.summary()
        assert summary["median_srocc"] == np.median(result.srocc) > 0.9
        assert summary["iqr_plcc"] >= 0.0 and summary["std_srocc"] == np.std(result.srocc)


def test_split_indices_are_disjoint_cover_all_and_match_the_protocol():
    for split in range(3):
        train, test = regression.split_indices(40, 10, split, seed=0)
        assert len(train) == 10 and len(test) == 30
        assert not set(train) & set(test)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(40))
    rng = np.random.default_rng(6)
    x, y = _linear_data(rng, 40, 3, noise=0.1)
    result = regression.data_efficient_protocol(x, y, num_train=(10,), num_splits=3, seed=0,
                                                mapping="none", alphas=(1.0,), folds=5)[10]
    for split, train in enumerate(result.train_indices):
        np.testing.assert_array_equal(train, regression.split_indices(40, 10, split, seed=0)[0])
        assert result.split_by == "image" and result.num_test[split] == 30
        # The recorded PLCC is the one on exactly the complement.
        model = regression.fit_ridge_cv(x[train], y[train], (1.0,), folds=5, seed=0)
        test = np.setdiff1d(np.arange(40), train)
        np.testing.assert_array_equal(result.test_indices[split], test)
        assert result.plcc[split] == pytest.approx(
            scipy.stats.pearsonr(model.predict(x[test]), y[test])[0], rel=1e-12)


def _references(sizes):
    """(sum(sizes),) labels "r0", "r1", ... repeated as `sizes` says, shuffled."""
    labels = np.repeat([f"r{k}" for k in range(len(sizes))], sizes)
    return np.random.default_rng(0).permutation(labels)


def test_split_by_reference_keeps_each_reference_on_one_side():
    sizes = [12, 3, 7, 9, 10, 5, 8, 11, 6, 4]  # 75 images of 10 references.
    groups = _references(sizes)
    held_out_sets = set()
    for split in range(20):
        train, test = regression.split_by_reference(groups, 30, split, seed=3)
        assert len(train) == 30 and len(np.unique(train)) == 30
        assert not set(groups[train]) & set(groups[test])
        # The test set is exactly every image of 2 (= 0.2 * 10) references.
        assert len(set(groups[test])) == 2
        np.testing.assert_array_equal(test, np.flatnonzero(np.isin(groups, groups[test])))
        held_out_sets.add(frozenset(groups[test]))
        again = regression.split_by_reference(groups, 30, split, seed=3)
        np.testing.assert_array_equal(train, again[0])
    assert len(held_out_sets) > 10  # Drawn anew for each split.


def test_protocol_by_reference_tests_only_unseen_references():
    rng = np.random.default_rng(10)
    x, y = _linear_data(rng, 75, 4, noise=0.1)
    groups = _references([12, 3, 7, 9, 10, 5, 8, 11, 6, 4])
    result = regression.data_efficient_protocol(x, y, num_train=(20,), num_splits=4,
                                                seed=1, groups=groups, mapping="none",
                                                alphas=(1.0,))[20]
    assert result.split_by == "reference" and result.train_indices.shape == (4, 20)
    for split, (train, test) in enumerate(zip(result.train_indices,
                                              result.test_indices)):
        expected = regression.split_by_reference(groups, 20, split, seed=1)
        np.testing.assert_array_equal(train, expected[0])
        np.testing.assert_array_equal(test, expected[1])
        assert not set(groups[train]) & set(groups[test])
        assert result.num_test[split] == len(test)
        model = regression.fit_ridge(x[train], y[train], 1.0)
        assert result.srocc[split] == pytest.approx(
            correlation.srocc(model.predict(x[test]), y[test]), rel=1e-12)


def test_median_split_is_the_split_with_the_median_srocc():
    def result(srocc):
        srocc = np.array(srocc)
        return regression.SplitResults(5, np.zeros((len(srocc), 5), int),
                                       (np.arange(3),) * len(srocc), "image", srocc,
                                       srocc, np.ones(len(srocc)))
    assert result([0.9, 0.2, 0.5, 0.7, 0.1]).median_split() == 2  # 0.5
    assert result([0.9, 0.2, 0.5, 0.7]).median_split() == 2  # Lower middle.
    assert result([0.4]).median_split() == 0


def test_num_train_by_reference_is_checked_against_the_worst_split():
    groups = _references([12, 3, 7, 9, 10, 5, 8, 11, 6, 4])
    # Held out: 2 references; the 2 largest (23 images) leave 52 to train from.
    regression.check_num_train(52, 75, groups=groups)
    with pytest.raises(ValueError) as raised:
        regression.check_num_train(53, 75, groups=groups)
    assert str(raised.value) == (
        "num_train 53 must be >= folds (5) and at most 52: holding out 2 of the 10 "
        "references for testing leaves as few as 52 images to train from")
    with pytest.raises(ValueError) as raised:
        regression.check_num_train(5, 7, groups=_references([4, 3]))
    assert str(raised.value) == ("holding out 1 of 2 references leaves as few as 3 "
                                 "images for testing; at least 5 are needed")
    with pytest.raises(ValueError, match="at least 2 references, got 1"):
        regression.data_efficient_protocol(np.zeros((9, 2)), np.arange(9.0),
                                           num_train=(5,), seed=0, groups=["a"] * 9)


def test_protocol_rejects_too_many_training_images():
    x, y = np.zeros((20, 2)), np.arange(20.0)
    with pytest.raises(ValueError, match="num_train 18"):
        regression.data_efficient_protocol(x, y, num_train=(18,), seed=0)


def test_cross_dataset_transfers_a_shared_linear_relation():
    rng = np.random.default_rng(7)
    x, y = _linear_data(rng, 400, 6, noise=0.1)
    result = regression.cross_dataset(x[:100], y[:100], x[100:] + 0.01, y[100:], seed=0,
                                      mapping="logistic4", alphas=(0.1, 1), folds=5)
    assert result["srocc"] > 0.99 and result["plcc"] > 0.99 and result["alpha"] == 0.1


# --- correlations ---------------------------------------------------------

def test_rank_correlations_on_small_known_cases():
    assert correlation.srocc([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert correlation.srocc([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # One swapped pair of six: (5 concordant - 1 discordant) / 6.
    assert correlation.krcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    pred, true = np.random.default_rng(8).normal(size=(2, 30))
    ranks = scipy.stats.rankdata
    assert correlation.srocc(pred, true) == pytest.approx(
        np.corrcoef(ranks(pred), ranks(true))[0, 1])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_plcc_mappings_on_a_monotone_nonlinear_relation(sign):
    rng = np.random.default_rng(9)
    pred = rng.uniform(-4, 4, size=300) * 0.01 + 0.5  # Tiny scale on purpose.
    mos = 20 + 60 / (1 + np.exp(-sign * (pred - 0.5) / 0.006))
    mos += 0.1 * rng.normal(size=300)
    logistic = correlation.plcc(pred, mos, "logistic4")
    poly = correlation.plcc(pred, mos, "poly3")
    raw = correlation.plcc(pred, mos, "none")
    assert logistic > 0.999
    assert abs(raw) < poly < logistic
    assert poly == pytest.approx(scipy.stats.pearsonr(
        np.poly1d(np.polyfit(pred, mos, 3))(pred), mos)[0], rel=1e-12)


def test_logistic_fit_failure_falls_back_to_raw_predictions(monkeypatch):
    def failing_fit(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")
    monkeypatch.setattr(correlation.scipy.optimize, "curve_fit", failing_fit)
    pred, mos = np.arange(10.0), np.arange(10.0) ** 2
    with pytest.warns(RuntimeWarning, match="logistic fit failed"):
        value = correlation.plcc(pred, mos, "logistic4")
    assert value == pytest.approx(scipy.stats.pearsonr(pred, mos)[0])


def test_unknown_mapping_is_named():
    with pytest.raises(ValueError, match="cubic"):
        correlation.plcc([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], "cubic")
