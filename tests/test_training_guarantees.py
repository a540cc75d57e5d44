"""Guarantees of the network and training layer (issue 11): non-finite values stop
training, evaluation with explicit learnables is pure (threads), options validate every
assignment, layers own their values and keep the network's dtype, and argument errors
name the argument, the value and the legal values."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray, Network
from fmtarray.layers import (
    Layer,
    batch_normalization_layer,
    convolution2d_layer,
    fully_connected_layer,
    image_input_layer,
    relu_layer,
    softmax_layer,
)
from fmtarray.ops.nn import one_hot
from fmtarray.training import TrainingOptions

_QUIET = dict(verbose=False, progress=False)


def _np(a):
    return np.asarray(fa._backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


def _blobs(n=40, seed=0, dtype=np.float32):
    protos = np.random.default_rng(1234).normal(0, 1, (3, 4, 4))
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = protos[y] + 0.7 * rng.normal(0, 1, (n, 4, 4))
    return _sscb(np.moveaxis(x, 0, -1)[:, :, None, :].astype(dtype)), y


def _sscb(a):
    """A FormattedArray of ``h×w×c×N`` data (MATLAB's layout)."""
    return FormattedArray(a, "SSCB")


def _mlp(conv=False):
    layers = [image_input_layer((4, 4, 1), normalization="none")]
    if conv:
        layers += [convolution2d_layer(3, 2, padding="same"), batch_normalization_layer()]
    layers += [fully_connected_layer(8), relu_layer(), fully_connected_layer(3), softmax_layer()]
    return Network(layers)


def _values(net):
    return {f"{k}.{n}": _np(v).copy() for k, d in net.learnables().items() for n, v in d.items()}


def _all_finite(net):
    return all(np.isfinite(v).all() for v in _values(net).values())


# item 1: non-finite loss, gradient or update stops training -------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("conv", [False, True])
def test_nan_pixel_gives_nan_loss_and_stops_at_once(conv):
    x, y = _blobs()
    xd = _np(x).copy()
    xd[2, 1, 0, 3] = np.nan  # one NaN pixel in the first mini-batch
    net = _mlp(conv).initialize(_sscb(xd[..., :1]), seed=0)
    before = _values(net)
    # every op propagates the NaN: the loss of the whole batch is NaN (no clamping)
    t = one_hot(np.asarray(y[:10]), 3)
    loss = fa.cross_entropy(net.predict(_sscb(xd[..., :10])), t)
    assert math.isnan(float(loss.data))
    with pytest.warns(RuntimeWarning, match="loss is NaN at iteration 1"):
        net, h = fa.train(net, _sscb(xd), y,
                          TrainingOptions(max_epochs=3, mini_batch_size=10, shuffle="never",
                                          **_QUIET))
    assert h.stop_reason == "nan-loss"
    # the history shows the iteration that stopped training, with its loss
    assert h.iteration == [1] and h.epoch == [1] and math.isnan(h.training_loss[0])
    assert h.output_network_iteration == 0
    after = _values(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_inf_loss_stops_as_nan_loss():
    x, y = _blobs()

    def inf_loss(yp, tt):
        return fa.cross_entropy(yp, tt) * math.inf

    with pytest.warns(RuntimeWarning, match="loss is inf at iteration 1"):
        _, h = fa.train(_mlp(), x, y, TrainingOptions(max_epochs=2, mini_batch_size=10, **_QUIET),
                        loss=inf_loss)
    assert h.stop_reason == "nan-loss" and h.iteration == [1] and h.training_loss == [math.inf]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_gradient_with_finite_loss_stops():
    """sqrt(0·y) is 0 (a finite loss) but its gradient is 0·inf = NaN."""
    x, y = _blobs()
    net = _mlp().initialize(_sscb(_np(x)[..., :1]), seed=0)
    before = _values(net)

    def loss(yp, tt):
        return fa.cross_entropy(yp, tt) + fa.sum(fa.sqrt(yp * 0.0))

    with pytest.warns(RuntimeWarning, match=r"gradient of learnables\['fc_1'\]\['weights'\] is non-finite \(NaN\) "
                      r"at iteration 1"):
        net, h = fa.train(net, x, y, TrainingOptions(max_epochs=3, mini_batch_size=10, **_QUIET),
                          loss=loss)
    assert h.stop_reason == "non-finite-gradient"
    assert h.iteration == [1] and math.isfinite(h.training_loss[0])
    assert h.output_network_iteration == 0
    after = _values(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflowing_step_on_the_last_iteration_is_not_a_normal_stop():
    """One iteration whose step overflows float32: the old loop reported "max-epochs"
    with inf/NaN learnables (the NaN loss would only have shown at the next iteration)."""
    x, y = _blobs()
    net = _mlp().initialize(_sscb(_np(x)[..., :1]), seed=0)
    before = _values(net)
    with pytest.warns(RuntimeWarning, match=r"solver step made learnables\[.*non-finite"):
        net, h = fa.train(net, x, y, TrainingOptions(max_epochs=1, mini_batch_size=40,
                                                     initial_learn_rate=1e300, **_QUIET))
    assert h.stop_reason == "non-finite-update" and h.iteration == [1]
    assert _all_finite(net)
    after = _values(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_finite_training_still_reports_max_epochs():
    x, y = _blobs()
    net, h = fa.train(_mlp(), x, y, TrainingOptions(max_epochs=2, mini_batch_size=10, **_QUIET))
    assert h.stop_reason == "max-epochs" and len(h.iteration) == 8 and _all_finite(net)


# item 2: evaluation with explicit learnables is pure ---------------------------------------


class SlowScale(Layer):
    """``x · w`` after a pause (so that a shared-state swap is caught by another thread)."""

    learnable_names = ("w",)

    def __init__(self, w, pause=0.002, watch=None):
        self.w = w
        self.pause = pause
        self.watch = watch  # (network, expected value): checked while evaluating

    def predict(self, x):
        time.sleep(self.pause)
        if self.watch is not None:
            net, expect = self.watch
            assert np.array_equal(_np(net["slowscale"].w), expect), "the shared layer changed"
        return x * self.w


def _pure_net():
    net = Network([image_input_layer((4, 4, 1), normalization="none"), fully_connected_layer(5),
                   SlowScale(FormattedArray(np.full((1,), 1.5, np.float32), "C")),
                   fully_connected_layer(3)])
    x, _ = _blobs(6)
    return net.initialize(x, seed=3), x


def _scaled(tree, s):
    return {k: {n: FormattedArray._wrap(v.data * np.float32(s), v.format) for n, v in d.items()}
            for k, d in tree.items()}


def test_predict_with_learnables_does_not_touch_the_layers():
    net, x = _pure_net()
    p2 = _scaled(net.learnables(), 2.0)
    net["slowscale"].watch = (net, _np(net["slowscale"].w).copy())
    net["slowscale"].pause = 0.0
    net.predict(x, learnables=p2)
    net.forward(x, learnables=p2)


@pytest.mark.parametrize("method", ["predict", "forward"])
def test_threads_with_different_learnables_get_their_own_results(method):
    net, x = _pure_net()
    base = net.learnables()
    trees = {s: _scaled(base, s) for s in (1.0, 2.0)}
    orig = _values(net)
    # single-threaded references, from independent networks holding the values
    ref = {}
    for s, tree in trees.items():
        other, _ = _pure_net()
        other.set_learnables(tree)
        ref[s] = _np(other.predict(x))
    results = {s: [] for s in trees}
    start = threading.Barrier(2)

    def work(s):
        start.wait()
        for _ in range(15):
            out = getattr(net, method)(x, learnables=trees[s])
            results[s].append(_np(out if method == "predict" else out[0]))

    threads = [threading.Thread(target=work, args=(s,)) for s in trees]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in trees:
        assert len(results[s]) == 15
        for r in results[s]:
            np.testing.assert_allclose(r, ref[s], rtol=1e-6, atol=1e-6)
    after = _values(net)
    assert all(np.array_equal(orig[k], after[k]) for k in orig)


def test_gradients_through_pure_evaluation_match_finite_differences():
    net, x = _pure_net()
    net["slowscale"].pause = 0.0
    t = one_hot(np.arange(6) % 3, 3)
    p = net.learnables()

    def loss(params):
        return fa.cross_entropy(fa.softmax(net.forward(x, params)[0]), t)

    g = fa.grad(loss)(p)
    w = _np(p["slowscale"]["w"]).astype(np.float64)
    h = 1e-2
    vals = []
    for s in (h, -h):
        q = {k: dict(d) for k, d in p.items()}
        q["slowscale"]["w"] = FormattedArray((w + s).astype(np.float32), "C")
        vals.append(float(loss(q).data))
    num = (vals[0] - vals[1]) / (2 * h)
    np.testing.assert_allclose(_np(g["slowscale"]["w"])[0], num, rtol=2e-2)


# item 11: TrainingOptions validates every assignment ---------------------------------------


@pytest.mark.parametrize("name, bad", [
    ("mini_batch_size", -5), ("mini_batch_size", 0), ("mini_batch_size", 2.5),
    ("max_epochs", 0), ("solver", "lbfgs"), ("initial_learn_rate", -1.0),
    ("initial_learn_rate", math.nan), ("momentum", 1.5), ("shuffle", "sometimes"),
    ("validation_frequency", 0), ("validation_patience", -1), ("seed", -1),
    ("verbose", "yes"), ("plots", "graph.jpg"), ("output_fcn", 3),
    ("validation_data", [1, 2, 3]), ("gradient_threshold", 0), ("epsilon", 0.0),
    ("learn_rate_schedule", "cosine"), ("reset_input_normalization", 1),
])
def test_options_assignment_is_validated_like_the_constructor(name, bad):
    with pytest.raises(ValueError) as at_construction:
        TrainingOptions(**{name: bad})
    o = TrainingOptions()
    before = getattr(o, name)
    with pytest.raises(ValueError) as at_assignment:
        setattr(o, name, bad)
    assert str(at_assignment.value) == str(at_construction.value)
    assert f"invalid {name}=" in str(at_assignment.value)
    assert getattr(o, name) == before or (before != before)  # unchanged (NaN-safe)


def test_options_assignment_normalises_and_is_used():
    o = TrainingOptions(**_QUIET)
    o.solver = "ADAM"
    assert o.solver == "adam"
    o.mini_batch_size = 10.0
    assert o.mini_batch_size == 10 and isinstance(o.mini_batch_size, int)
    o.max_epochs = 1
    x, y = _blobs()
    _, h = fa.train(_mlp(), x, y, o)
    assert len(h.iteration) == 4 and h.stop_reason == "max-epochs"


def test_options_solver_dependent_defaults_follow_the_solver():
    o = TrainingOptions()
    assert o.initial_learn_rate == 0.01
    o.solver = "adam"  # the learn rate was the solver's default: it follows, as at construction
    assert o.initial_learn_rate == 0.001 and o.squared_gradient_decay_factor == 0.999
    assert o.replace(solver="rmsprop").squared_gradient_decay_factor == 0.9
    o.initial_learn_rate = 0.5  # given explicitly: kept
    o.solver = "sgdm"
    assert o.initial_learn_rate == 0.5
    assert o.replace(solver="adam").initial_learn_rate == 0.5


def test_options_copies_do_not_share_the_defaults_bookkeeping():
    import copy

    o = TrainingOptions()
    c = copy.copy(o)
    c.initial_learn_rate = 0.5  # the copy's learn rate is now explicit, not the original's
    o.solver = "adam"
    assert o.initial_learn_rate == 0.001 and c.initial_learn_rate == 0.5


def test_options_unknown_attribute_is_refused():
    o = TrainingOptions()
    with pytest.raises(AttributeError, match="max_epochs"):
        o.max_epoch = 3  # a typo must not be ignored silently


# item 15: layers own their values, the network keeps its dtype, no nested networks ----------


def test_layers_copy_values_on_set():
    w = np.ones((3, 4), np.float32)
    b = np.zeros((3, 1), np.float32)
    fc = fully_connected_layer(3, weights=w, bias=b)
    w[:] = 7.0
    b[:] = 7.0
    assert _np(fc.weights).max() == 1.0 and _np(fc.bias).max() == 0.0
    cw = np.ones((2, 2, 1, 3), np.float32)
    conv = convolution2d_layer(2, 3, weights=cw, bias=np.zeros((1, 1, 3), np.float32))
    cw[:] = 5.0
    assert _np(conv.weights).max() == 1.0
    off = np.zeros((1, 1, 2), np.float32)
    bn = batch_normalization_layer(offset=off, scale=np.ones((1, 1, 2), np.float32))
    off[:] = 9.0
    assert _np(bn.offset).max() == 0.0
    # attribute assignment and set_learnables, raw and formatted
    fw = FormattedArray(np.full((3, 4), 2.0, np.float32))
    fc.weights = fw
    fw.data[:] = 8.0
    assert _np(fc.weights).max() == 2.0
    net = Network([image_input_layer((2, 2, 1), normalization="none"), fully_connected_layer(3)])
    net.initialize(seed=0)
    new = np.full((3, 4), 3.0, np.float32)
    net.set_learnables({"fc": {"weights": new}})
    new[:] = -1.0
    assert _np(net["fc"].weights).min() == 3.0
    state = np.full((1, 1, 2), 4.0, np.float32)
    bn.update_state({"trained_mean": state})
    state[:] = 0.0
    assert _np(bn.trained_mean).min() == 4.0


def test_float32_network_trained_on_float64_data_stays_float32():
    x32, y = _blobs(dtype=np.float32)
    x64 = _sscb(_np(x32).astype(np.float64))
    net = _mlp(conv=True).initialize(_sscb(_np(x32)[..., :1]),
                                     seed=0)
    net, h = fa.train(net, x64, y, TrainingOptions(max_epochs=2, mini_batch_size=10, **_QUIET))
    assert h.stop_reason == "max-epochs"
    for k, d in net.learnables().items():
        for n, v in d.items():
            assert v.dtype == np.float32, f"{k}.{n} is {v.dtype}"
    for k, d in net.state().items():
        for n, v in d.items():
            assert v.dtype == np.float32, f"state {k}.{n} is {v.dtype}"
    # the input rule: a float64 input is cast to the network's float32 at the input
    y64 = net.predict(x64)
    assert y64.dtype == np.float32
    np.testing.assert_array_equal(_np(y64), _np(net.predict(x32)))
    # float64 one-hot targets are cast too
    t64 = one_hot(np.asarray(y), 3, dtype=np.float64)
    net, _ = fa.train(net, x64, t64, TrainingOptions(max_epochs=1, mini_batch_size=10, **_QUIET))
    assert all(v.dtype == np.float32 for d in net.learnables().values() for v in d.values())


def test_nested_network_is_refused_at_construction():
    inner = Network([fully_connected_layer(3)])
    with pytest.raises(TypeError, match=r"layer 2 .*Network.*not be nested"):
        Network([image_input_layer((2, 2, 1)), inner, softmax_layer()])
    # a network's layers can be spliced in instead
    inner2 = Network([fully_connected_layer(3)])
    net = Network([image_input_layer((2, 2, 1)), *inner2.layers, softmax_layer()])
    assert net.initialize(seed=0).learnables_table().num_values == 15


# item 13 (part): one_hot and seed arguments -----------------------------------------------


def test_one_hot_refuses_a_fractional_class_count():
    with pytest.raises(ValueError, match=r"one_hot: invalid num_classes=2\.7; .*positive integer"):
        one_hot(np.array([0, 1]), 2.7)
    with pytest.raises(ValueError, match="num_classes=0"):
        one_hot(np.array([0]), 0)
    with pytest.raises(TypeError, match="num_classes"):
        one_hot(np.array([0]), "3")
    assert one_hot(np.array([0, 2]), 3.0).shape == (3, 2)  # an integral float is fine
    assert one_hot(np.array([0, 2]), np.int64(3)).shape == (3, 2)


@pytest.mark.parametrize("bad", [3, 5, -1])
def test_one_hot_refuses_out_of_range_labels(xp, bad):
    labels = xp.asarray(np.array([0, 1, bad, 2]))
    with pytest.raises(ValueError, match=rf"one_hot: invalid labels: .*{bad}.*0\.\.2"):
        one_hot(labels, 3)
    ok = one_hot(xp.asarray(np.array([2, 0, 1])), 3)
    np.testing.assert_array_equal(_np(ok), np.eye(3, dtype=np.float32)[:, [2, 0, 1]])


@pytest.mark.parametrize("seed", [-1, 2.5, "a", True])
def test_initialize_refuses_a_bad_seed(seed):
    net = Network([image_input_layer((2, 2, 1)), fully_connected_layer(3)])
    with pytest.raises((ValueError, TypeError), match=r"seed=.*non-negative integer"):
        net.initialize(seed=seed)
    x = FormattedArray(np.zeros((4, 2), np.float32), "CB")
    with pytest.raises((ValueError, TypeError), match=r"seed=.*non-negative integer"):
        fully_connected_layer(3).initialize(x, seed=seed)
    xc = FormattedArray(np.zeros((4, 4, 1, 2), np.float32), "SSCB")
    with pytest.raises((ValueError, TypeError), match=r"seed=.*non-negative integer"):
        convolution2d_layer(3, 2).initialize(xc, seed=seed)
    # legal seeds: non-negative ints, a Generator, None
    for ok in (0, 7, np.random.default_rng(1), None):
        Network([image_input_layer((2, 2, 1)), fully_connected_layer(3)]).initialize(seed=ok)
