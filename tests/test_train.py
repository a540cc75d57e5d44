"""Solvers (SPEC §4, pinned with hand-computed numbers), options, and the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray.training import (
    SGDM, Adam, RMSProp, TrainingHistory, TrainingOptions, adam, learn_rate_at, plot_training,
    rmsprop, sgdm,
)


def _fa(v, fmt="", xp=None, dtype="float64"):
    a = np.asarray(v, dtype=dtype)
    return FormattedArray(a if xp is None else xp.asarray(a), fmt)


def _np(x):
    return np.asarray(fa._backend.to_numpy(x.data))


def _tree(xp=None, w=(1.0, -2.0), b=(0.5,)):
    return {"fc": {"weights": _fa(w, "U", xp), "bias": _fa(b, "U", xp)}}


# ---------------------------------------------------------------------------
# SPEC §4, step by step with explicit numbers
# ---------------------------------------------------------------------------

def test_sgdm_two_steps_by_hand(xp):
    """lr = 0.1 × factor 2 = 0.2; l2 = 0.1 × factor 3 = 0.3; momentum 0.9.

    step 1: g = [0.5, 0.25] + 0.3·[1, -2] = [0.8, -0.35];  v = -0.2·g = [-0.16, 0.07];
            W = [0.84, -1.93]
    step 2: g = [0.1, -0.1] + 0.3·[0.84, -1.93] = [0.352, -0.679]
            v = 0.9·[-0.16, 0.07] - 0.2·[0.352, -0.679] = [-0.2144, 0.1988]
            W = [0.6256, -1.7312]
    """
    s = sgdm(learn_rate=0.1, momentum=0.9, l2_regularization=0.1)
    p = {"w": _fa([1.0, -2.0], "U", xp.ns)}
    p = s.update(p, {"w": _fa([0.5, 0.25], "U", xp.ns)}, {"w": 2.0}, {"w": 3.0})
    np.testing.assert_allclose(_np(p["w"]), [0.84, -1.93], rtol=0, atol=1e-12)
    p = s.update(p, {"w": _fa([0.1, -0.1], "U", xp.ns)}, {"w": 2.0}, {"w": 3.0})
    np.testing.assert_allclose(_np(p["w"]), [0.6256, -1.7312], rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(FormattedArray(s.state["arg['w']"]["velocity"])),
                               [-0.2144, 0.1988], atol=1e-12)
    assert p["w"].format == "U"
    assert fa._backend.library_name(p["w"].data) == fa._backend.library_name(xp.asarray([0.0]))


def test_adam_two_steps_by_hand(xp):
    """lr = 0.01 × factor 0.5 = 0.005; l2 = 0.1 × factor 2 = 0.2; β1 0.9, β2 0.999, ε 1e-3
    (a large ε pins where SPEC §4 puts it: added to sqrt(v) of the *uncorrected* v).

    step 1: g = [0.5, 0.25] + 0.2·[1, -2] = [0.7, -0.15]
            m = 0.1·g = [0.07, -0.015];  v = 0.001·g² = [4.9e-4, 2.25e-5]
            W -= 0.005·sqrt(0.001)/0.1 · m/(sqrt(v)+1e-3)
              → [0.9952161139429568, -1.9958705619744774]
    step 2: g = [0.1, -0.1] + 0.2·W = [0.2990432227885914, -0.4991741123948955]
            m = [0.09290432227885911, -0.06341741123948955]
            v = [5.789368490957876e-4, 2.7165229448523204e-4]
            W -= 0.005·sqrt(1-0.999²)/(1-0.9²) · m/(sqrt(v)+1e-3)
              → [0.9908543869714469, -1.991602377015527]
    """
    s = adam(learn_rate=0.01, gradient_decay_factor=0.9, squared_gradient_decay_factor=0.999,
             epsilon=1e-3, l2_regularization=0.1)
    p = {"w": _fa([1.0, -2.0], "U", xp.ns)}
    p = s.update(p, {"w": _fa([0.5, 0.25], "U", xp.ns)}, {"w": 0.5}, {"w": 2.0})
    np.testing.assert_allclose(_np(p["w"]), [0.9952161139429568, -1.9958705619744774],
                               rtol=0, atol=1e-12)
    p = s.update(p, {"w": _fa([0.1, -0.1], "U", xp.ns)}, {"w": 0.5}, {"w": 2.0})
    np.testing.assert_allclose(_np(p["w"]), [0.9908543869714469, -1.991602377015527],
                               rtol=0, atol=1e-12)
    st = s.state["arg['w']"]
    np.testing.assert_allclose(_np(FormattedArray(st["m"])),
                               [0.09290432227885911, -0.06341741123948955], atol=1e-14)
    np.testing.assert_allclose(_np(FormattedArray(st["v"])),
                               [5.789368490957876e-4, 2.7165229448523204e-4], atol=1e-15)


def test_adam_first_step_is_lr_times_sign():
    """With a tiny ε, the bias-corrected first Adam step moves each weight by exactly lr."""
    s = adam(learn_rate=0.01, l2_regularization=0.0, epsilon=1e-12)
    p = s.update({"w": _fa([1.0, -2.0, 3.0])}, {"w": _fa([0.3, -7.0, 1e-3])})
    np.testing.assert_allclose(_np(p["w"]), [0.99, -1.99, 2.99], atol=1e-9)


def test_rmsprop_two_steps_by_hand(xp):
    """lr = 0.01 × factor 3 = 0.03; l2 = 0.05 × 1; β2 0.9, ε 1e-8.

    step 1: g = [0.5, 0.25] + 0.05·[1, -2] = [0.55, 0.15];  v = 0.1·g² = [0.03025, 0.00225]
            W -= 0.03·g/(sqrt(v)+ε) → [0.9051316756494938, -2.094868309805056]
    step 2: g = [0.1, -0.1] + 0.05·W = [0.1452565837824747, -0.2047434154902528]
            v = 0.9·v + 0.1·g² = [0.029334947513215515, 0.006216986618661428]
            W → [0.8796889053196072, -2.016967642631301]
    """
    s = rmsprop(learn_rate=0.01, squared_gradient_decay_factor=0.9, epsilon=1e-8,
                l2_regularization=0.05)
    p = {"w": _fa([1.0, -2.0], "U", xp.ns)}
    p = s.update(p, {"w": _fa([0.5, 0.25], "U", xp.ns)}, {"w": 3.0}, {"w": 1.0})
    np.testing.assert_allclose(_np(p["w"]), [0.9051316756494938, -2.094868309805056], atol=1e-12)
    p = s.update(p, {"w": _fa([0.1, -0.1], "U", xp.ns)}, {"w": 3.0}, {"w": 1.0})
    np.testing.assert_allclose(_np(p["w"]), [0.8796889053196072, -2.016967642631301], atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: sgdm(0.1, momentum=0.9, l2_regularization=0.5),
    lambda: adam(0.1, l2_regularization=0.5),
    lambda: rmsprop(0.1, l2_regularization=0.5),
])
def test_frozen_parameter_does_not_move(make):
    """Learn-rate factor 0: not moved by the gradient, by L2, or by momentum; the very same
    object comes back and no solver state is created for it."""
    s = make()
    p = _tree()
    frozen = p["fc"]["weights"]
    lrf = {"fc": {"weights": 0.0, "bias": 1.0}}
    l2f = {"fc": {"weights": 1.0, "bias": 1.0}}
    for _ in range(3):
        g = {"fc": {"weights": _fa([5.0, 5.0], "U"), "bias": _fa([1.0], "U")}}
        p = s.update(p, g, lrf, l2f)
    assert p["fc"]["weights"] is frozen
    np.testing.assert_array_equal(_np(p["fc"]["weights"]), [1.0, -2.0])
    assert not np.allclose(_np(p["fc"]["bias"]), [0.5])
    assert "arg['fc']['weights']" not in s.state


def test_zero_l2_factor_means_no_weight_decay():
    """Bias L2 factor 0 (the layers' default): a zero gradient leaves the bias alone while the
    weights (L2 factor 1) decay: W -= lr·l2·W."""
    s = sgdm(0.5, momentum=0.0, l2_regularization=0.1)
    p = _tree(w=(2.0, -4.0), b=(3.0,))
    zero = {"fc": {"weights": _fa([0.0, 0.0], "U"), "bias": _fa([0.0], "U")}}
    p = s.update(p, zero, None, {"fc": {"weights": 1.0, "bias": 0.0}})
    np.testing.assert_allclose(_np(p["fc"]["weights"]), [2.0 - 0.5 * 0.1 * 2.0, -4.0 + 0.5 * 0.1 * 4.0])
    np.testing.assert_array_equal(_np(p["fc"]["bias"]), [3.0])


def test_layer_bias_l2_factor_defaults_to_zero():
    from fmtarray.layers import Convolution2DLayer

    layer = Convolution2DLayer(3, 4)
    assert layer.l2_factor("bias") == 0.0
    assert layer.l2_factor("weights") == 1.0
    assert layer.learn_rate_factor("bias") == 1.0


def test_clipping_is_applied_after_l2():
    """W = [3, 4], g = 0, l2 = 1: the regularised gradient [3, 4] (norm 5) is clipped to norm 1
    → [0.6, 0.8]; lr 1, first sgdm step → W = [2.4, 3.2].  (Clipping before L2 would give
    W = [0, 0].)"""
    s = sgdm(1.0, momentum=0.9, l2_regularization=1.0, gradient_threshold=1.0,
             gradient_threshold_method="l2norm")
    p = s.update({"w": _fa([3.0, 4.0])}, {"w": _fa([0.0, 0.0])})
    np.testing.assert_allclose(_np(p["w"]), [2.4, 3.2], atol=1e-12)


def test_clipping_methods():
    w = {"a": _fa([3.0]), "b": _fa([4.0, 0.0])}
    g = {"a": _fa([3.0]), "b": _fa([4.0, -0.5])}
    # absolute-value: each element into [-1, 1]
    s = sgdm(1.0, momentum=0.0, l2_regularization=0.0, gradient_threshold=1.0,
             gradient_threshold_method="absolute-value")
    p = s.update(w, g)
    np.testing.assert_allclose(_np(p["a"]), [2.0])
    np.testing.assert_allclose(_np(p["b"]), [3.0, 0.5])
    # l2norm: each parameter on its own ([3] → [1]; [4, -0.5] → norm 1)
    s = sgdm(1.0, momentum=0.0, l2_regularization=0.0, gradient_threshold=1.0)
    p = s.update(w, g)
    n = math.hypot(4.0, 0.5)
    np.testing.assert_allclose(_np(p["a"]), [2.0])
    np.testing.assert_allclose(_np(p["b"]), [4.0 - 4.0 / n, 0.5 / n])
    # global-l2norm: one factor for all, joint norm sqrt(9 + 16 + 0.25)
    s = sgdm(1.0, momentum=0.0, l2_regularization=0.0, gradient_threshold=1.0,
             gradient_threshold_method="global-l2norm")
    p = s.update(w, g)
    n = math.sqrt(9 + 16 + 0.25)
    np.testing.assert_allclose(_np(p["a"]), [3.0 - 3.0 / n])
    np.testing.assert_allclose(_np(p["b"]), [4.0 - 4.0 / n, 0.5 / n])
    # below the threshold nothing changes
    s = sgdm(1.0, momentum=0.0, l2_regularization=0.0, gradient_threshold=100.0,
             gradient_threshold_method="global-l2norm")
    p = s.update(w, g)
    np.testing.assert_allclose(_np(p["a"]), [0.0])


def test_learn_rate_override_and_scalar_factors():
    s = sgdm(1.0, momentum=0.0, l2_regularization=0.0)
    p = s.update({"w": _fa([1.0])}, {"w": _fa([1.0])}, 0.5, learn_rate=0.2)
    np.testing.assert_allclose(_np(p["w"]), [0.9])


def test_solver_preserves_dtype_and_format():
    s = adam(0.1)
    w = FormattedArray(np.ones((2, 3, 4), dtype=np.float32), "SSC")
    p = s.update([w], [FormattedArray(np.ones((2, 3, 4), dtype=np.float32), "SSC")])
    assert isinstance(p, list) and p[0].dtype == np.float32 and p[0].format == "SSC"


def test_solver_errors():
    s = sgdm(0.1)
    with pytest.raises(ValueError, match="does not match"):
        s.update({"w": _fa([1.0])}, {"v": _fa([1.0])})
    with pytest.raises(ValueError, match="no factor for"):
        s.update({"w": _fa([1.0])}, {"w": _fa([1.0])}, {"x": 1.0})
    with pytest.raises(ValueError, match="shape"):
        s.update({"w": _fa([1.0])}, {"w": _fa([1.0, 2.0])})
    with pytest.raises(ValueError, match="momentum=1.5"):
        SGDM(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="gradient_threshold_method='l3'.*l2norm"):
        Adam(gradient_threshold_method="l3")
    with pytest.raises(ValueError, match="epsilon=0"):
        RMSProp(epsilon=0)


# ---------------------------------------------------------------------------
# options and schedules
# ---------------------------------------------------------------------------

def test_options_defaults_follow_matlab():
    o = TrainingOptions()
    assert (o.solver, o.initial_learn_rate, o.mini_batch_size, o.max_epochs, o.shuffle) == \
        ("sgdm", 0.01, 128, 30, "once")
    assert (o.l2_regularization, o.momentum, o.gradient_threshold_method) == (1e-4, 0.9, "l2norm")
    assert math.isinf(o.gradient_threshold)
    a = TrainingOptions("adam")
    assert (a.initial_learn_rate, a.squared_gradient_decay_factor, a.gradient_decay_factor) == \
        (0.001, 0.999, 0.9)
    r = TrainingOptions("RMSProp")
    assert (r.solver, r.initial_learn_rate, r.squared_gradient_decay_factor) == \
        ("rmsprop", 0.001, 0.9)
    s = TrainingOptions("adam", initial_learn_rate=0.05, l2_regularization=0.0).make_solver()
    assert isinstance(s, Adam) and s.learn_rate == 0.05 and s.l2_regularization == 0.0


@pytest.mark.parametrize("kw, pattern", [
    ({"solver": "lbfgs"}, r"solver='lbfgs'.*'sgdm', 'adam', 'rmsprop'"),
    ({"initial_learn_rate": 0}, r"initial_learn_rate=0"),
    ({"mini_batch_size": 0}, r"mini_batch_size=0.*integer >= 1"),
    ({"mini_batch_size": 2.5}, r"mini_batch_size=2.5"),
    ({"max_epochs": -1}, r"max_epochs=-1"),
    ({"shuffle": "always"}, r"shuffle='always'.*'once', 'every-epoch', 'never'"),
    ({"l2_regularization": -1e-4}, r"l2_regularization=-0.0001"),
    ({"momentum": 1.1}, r"momentum=1.1"),
    ({"gradient_decay_factor": 1.0}, r"gradient_decay_factor=1.0"),
    ({"epsilon": 0.0}, r"epsilon=0.0"),
    ({"gradient_threshold": -1}, r"gradient_threshold=-1"),
    ({"gradient_threshold_method": "max"}, r"gradient_threshold_method='max'.*global-l2norm"),
    ({"learn_rate_schedule": "cosine"}, r"learn_rate_schedule='cosine'.*piecewise"),
    ({"learn_rate_drop_factor": 2}, r"learn_rate_drop_factor=2"),
    ({"validation_data": np.zeros(3)}, r"validation_data=.*tuple \(inputs, targets\)"),
    ({"validation_frequency": 0}, r"validation_frequency=0"),
    ({"plots": "bar.jpg"}, r"plots='bar.jpg'.*training-progress"),
    ({"progress": "yes"}, r"progress='yes'"),
    ({"verbose": 1}, r"verbose=1"),
    ({"seed": -3}, r"seed=-3"),
    ({"output_network": "best"}, r"output_network='best'.*best-validation-loss"),
])
def test_options_errors_name_option_value_and_legal_values(kw, pattern):
    with pytest.raises(ValueError, match=r"TrainingOptions: invalid " + pattern):
        TrainingOptions(**kw)


def test_learn_rate_schedules():
    o = TrainingOptions(initial_learn_rate=0.1, learn_rate_schedule="piecewise",
                        learn_rate_drop_period=2, learn_rate_drop_factor=0.5)
    assert [learn_rate_at(o, e, 1) for e in (1, 2, 3, 4, 5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert learn_rate_at(o.replace(learn_rate_schedule="none"), 7, 1) == 0.1
    f = TrainingOptions(initial_learn_rate=0.1,
                        learn_rate_schedule=lambda lr0, it, ep: lr0 / it)
    assert learn_rate_at(f, 1, 4) == 0.025
    with pytest.raises(ValueError, match="max_epochs=0"):
        o.replace(max_epochs=0)


def test_plot_training_writes_png(tmp_path):
    h = TrainingHistory(iteration=[1, 2, 3, 4], epoch=[1, 1, 2, 2],
                        training_loss=[2.0, 1.5, 1.0, 0.8], training_accuracy=[10, 30, 60, 70],
                        validation_loss=[math.nan, 1.6, math.nan, 0.9],
                        validation_accuracy=[math.nan, 25, math.nan, 65],
                        base_learn_rate=[0.1] * 4, epoch_training_loss=[1.75, 0.9],
                        epoch_training_accuracy=[20, 65], stop_reason="max-epochs")
    out = plot_training(h, tmp_path / "p.png")
    data = (tmp_path / "p.png").read_bytes()
    assert out == tmp_path / "p.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ---------------------------------------------------------------------------
# the training loop (a small fully connected network: no convolution needed)
# ---------------------------------------------------------------------------

from fmtarray.layers import (  # noqa: E402
    batch_normalization_layer, fully_connected_layer, image_input_layer, relu_layer,
    softmax_layer,
)


def _blobs(n=96, seed=0, dtype=np.float32):
    """Three classes of noisy 4×4 one-channel images (N×4×4 host data, labels)."""
    protos = np.random.default_rng(1234).normal(0, 1, (3, 4, 4))
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = protos[y] + 0.7 * rng.normal(0, 1, (n, 4, 4)) + 5.0
    return x.astype(dtype), y


def _sscb(a, xp=None):
    a = a[..., None]
    return FormattedArray(a if xp is None else xp.asarray(a), "BSSC")


def _mlp(bn=False, **fc):
    layers = [image_input_layer((4, 4, 1)), fully_connected_layer(8, **fc)]
    if bn:
        layers.append(batch_normalization_layer())
    layers += [relu_layer(), fully_connected_layer(3), softmax_layer()]
    return fa.Network(layers)


_QUIET = dict(verbose=False, progress=False)


def test_train_reduces_loss_and_learns():
    x, y = _blobs(120)
    opts = TrainingOptions("sgdm", initial_learn_rate=0.05, mini_batch_size=16, max_epochs=8,
                           **_QUIET)
    net, h = fa.train(_mlp(bn=True), _sscb(x), y, opts)
    assert h.stop_reason == "max-epochs"
    assert len(h.training_loss) == 8 * (120 // 16) == len(h.iteration) == len(h.base_learn_rate)
    assert len(h.epoch_training_loss) == 8
    assert h.epoch_training_loss[-1] < 0.5 * h.epoch_training_loss[0]
    pred = np.argmax(_np(net.predict(_sscb(x))), axis=0)
    assert (pred == y).mean() > 0.95
    assert h.epoch_training_accuracy[-1] > 90


def test_input_statistics_come_from_training_data():
    x, y = _blobs(48)
    net, _ = fa.train(_mlp(), _sscb(x), y, TrainingOptions(max_epochs=1, **_QUIET))
    np.testing.assert_allclose(np.asarray(net[0].mean).ravel(), [x.mean()], rtol=1e-5)
    assert net[0].statistics_computed


def test_train_same_numbers_on_every_backend(xp):
    """float64, same seed: the loss curve on any library equals NumPy's."""
    x, y = _blobs(36, dtype=np.float64)
    opts = TrainingOptions("adam", initial_learn_rate=0.01, mini_batch_size=8, max_epochs=2,
                           shuffle="every-epoch", seed=3, **_QUIET)
    _, ref = fa.train(_mlp(bn=True), _sscb(x), y, opts)
    net, h = fa.train(_mlp(bn=True), _sscb(x, xp.ns) if xp.name != "numpy" else _sscb(x), y, opts)
    np.testing.assert_allclose(h.training_loss, ref.training_loss, rtol=1e-9)
    w = net.learnables()["fc_2"]["weights"]
    # Dask-backed data is streamed one computed mini-batch at a time into a network that
    # lives in the chunks' library (NumPy here); every other library trains in place
    lib = "numpy" if xp.name == "dask" else fa._backend.library_name(xp.asarray([0.0]))
    assert fa._backend.library_name(w.data) == lib


def test_one_hot_targets_equal_integer_labels():
    x, y = _blobs(30)
    opts = TrainingOptions(max_epochs=2, mini_batch_size=10, **_QUIET)
    _, h1 = fa.train(_mlp(), _sscb(x), y, opts)
    onehot = FormattedArray(np.eye(3, dtype=np.float32)[:, y], "CB")
    _, h2 = fa.train(_mlp(), _sscb(x), onehot, opts)
    assert h1.training_loss == h2.training_loss


def test_raw_input_is_matlab_layout_and_last_partial_batch_is_discarded():
    x, y = _blobs(30)
    raw = np.ascontiguousarray(np.moveaxis(x, 0, -1)[:, :, None, :])  # h×w×c×N
    _, h = fa.train(_mlp(), raw, y, TrainingOptions(max_epochs=2, mini_batch_size=8, **_QUIET))
    assert len(h.training_loss) == 2 * 3  # 30 // 8 = 3 full mini-batches per epoch


def test_frozen_layer_in_a_network_does_not_move():
    x, y = _blobs(30)
    net = _mlp(weight_learn_rate_factor=0, bias_learn_rate_factor=0).initialize()
    before = {k: _np(v).copy() for k, v in net.learnables()["fc_1"].items()}
    other = _np(net.learnables()["fc_2"]["weights"]).copy()
    fa.train(net, _sscb(x), y, TrainingOptions(max_epochs=2, mini_batch_size=10,
                                               l2_regularization=0.1, **_QUIET))
    for k, v in net.learnables()["fc_1"].items():
        np.testing.assert_array_equal(_np(v), before[k])
    assert not np.allclose(_np(net.learnables()["fc_2"]["weights"]), other)


def test_network_bias_l2_factor_is_zero_by_default():
    net = _mlp().initialize()
    l2 = net.l2_factors()
    assert l2["fc_1"] == {"weights": 1.0, "bias": 0.0}
    assert net.learn_rate_factors()["fc_2"] == {"weights": 1.0, "bias": 1.0}


def test_validation_schedule_and_history():
    x, y = _blobs(60)
    vx, vy = _blobs(24, seed=1)
    opts = TrainingOptions("sgdm", initial_learn_rate=0.05, mini_batch_size=10, max_epochs=4,
                           learn_rate_schedule="piecewise", learn_rate_drop_period=2,
                           learn_rate_drop_factor=0.5, validation_data=(_sscb(vx), vy),
                           validation_frequency=4, **_QUIET)
    _, h = fa.train(_mlp(), _sscb(x), y, opts)
    assert h.base_learn_rate == [0.05] * 12 + [0.025] * 12
    ran = [i for i, v in zip(h.iteration, h.validation_loss) if not math.isnan(v)]
    assert ran == [1, 4, 8, 12, 16, 20, 24]
    assert len(h.epoch_validation_loss) == 4 and not any(map(math.isnan, h.epoch_validation_loss))
    assert h.final_validation_accuracy == h.validation_accuracy[-1] > 80
    assert h.as_dict()["stop_reason"] == "max-epochs"


def test_validation_patience_and_best_network():
    x, y = _blobs(60)
    vx, vy = _blobs(24, seed=1)
    # a far too large learn rate makes the validation loss go up: patience stops training
    opts = TrainingOptions("sgdm", initial_learn_rate=5.0, mini_batch_size=10, max_epochs=20,
                           validation_data=(_sscb(vx), vy), validation_frequency=1,
                           validation_patience=3, output_network="best-validation-loss", **_QUIET)
    net, h = fa.train(_mlp(), _sscb(x), y, opts)
    assert h.stop_reason in ("validation-patience", "nan-loss")
    vl = [v for v in h.validation_loss if not math.isnan(v)]
    assert h.final_validation_loss == pytest.approx(min(vl), rel=1e-5)
    assert h.output_network_iteration == h.iteration[int(np.nanargmin(h.validation_loss))]


def test_output_fcn_stops_and_nan_loss_stops():
    x, y = _blobs(40)
    seen = []

    def stop_at_3(info):
        seen.append(info["iteration"])
        return info["iteration"] == 3

    _, h = fa.train(_mlp(), _sscb(x), y, TrainingOptions(max_epochs=5, mini_batch_size=10,
                                                         output_fcn=stop_at_3, **_QUIET))
    assert seen == [1, 2, 3] and h.stop_reason == "output-fcn" and len(h.training_loss) == 3
    def nan_loss(yp, tt):
        return fa.cross_entropy(yp, tt) * math.nan

    with pytest.warns(RuntimeWarning, match="loss is NaN at iteration 1"):
        _, h = fa.train(_mlp(), _sscb(x), y, TrainingOptions(max_epochs=2, mini_batch_size=10,
                                                             **_QUIET), loss=nan_loss)
    # the stopping iteration is in the history (its loss NaN); the network is the one
    # before it
    assert h.stop_reason == "nan-loss" and h.iteration == [1] and math.isnan(h.training_loss[0])
    assert h.output_network_iteration == 0 and h.epoch_training_loss == []


def test_custom_loss_callable():
    x, y = _blobs(30)
    t = FormattedArray(np.eye(3, dtype=np.float32)[:, y], "CB")

    def mse(yp, tt):
        return fa.mean(fa.sum(fa.square(yp - tt), "C"))

    _, h = fa.train(_mlp(), _sscb(x), t, TrainingOptions("adam", max_epochs=5, mini_batch_size=10,
                                                         initial_learn_rate=0.01, **_QUIET),
                    loss=mse)
    assert h.training_loss[-1] < h.training_loss[0]
    assert not math.isnan(h.training_accuracy[0])


def test_verbose_table_progress_bar_and_plot(tmp_path, capsys):
    x, y = _blobs(30)
    png = tmp_path / "progress.png"
    opts = TrainingOptions(max_epochs=2, mini_batch_size=10, verbose=True, verbose_frequency=2,
                           progress=True, plots=str(png))
    fa.train(_mlp(), _sscb(x), y, opts)
    out, err = capsys.readouterr()
    assert "Mini-batch" in out and "Training finished: Max epochs completed." in out
    assert "6/6" in err  # the progress bar (tqdm or the text fallback) on stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_train_errors():
    x, y = _blobs(12)
    net, opts = _mlp(), TrainingOptions(max_epochs=1, **_QUIET)
    with pytest.raises(ValueError, match=r"class labels must be in 0..2.*0..5"):
        fa.train(net, _sscb(x), np.arange(12) % 6, opts)
    with pytest.raises(ValueError, match="11 labels but the inputs have 12"):
        fa.train(net, _sscb(x), y[:11], opts)
    with pytest.raises(ValueError, match="integer class labels"):
        fa.train(net, _sscb(x), y.astype(float), opts)
    with pytest.raises(ValueError, match="batch dim 'B'"):
        fa.train(net, FormattedArray(x, "SSC"), y, opts)
    with pytest.raises(TypeError, match="floating point"):
        fa.train(net, _sscb(x.astype(np.int32)), y, opts)
    with pytest.raises(TypeError, match="TrainingOptions"):
        fa.train(net, _sscb(x), y, {"max_epochs": 1})
    with pytest.raises(ValueError, match="invalid loss='mse'"):
        fa.train(net, _sscb(x), y, opts, loss="mse")


def test_matlab_names():
    from fmtarray.matlab import trainingOptions, trainNetwork

    o = trainingOptions("adam", "MaxEpochs", 3, MiniBatchSize=10, Verbose=0, Plots="none",
                        Progress=False)
    assert (o.solver, o.max_epochs, o.mini_batch_size, o.verbose) == ("adam", 3, 10, False)
    with pytest.raises(ValueError, match=r"trainingOptions: invalid MiniBatchSize \(mini_batch_size\)=0"):
        trainingOptions("sgdm", MiniBatchSize=0)
    with pytest.raises(ValueError, match=r"invalid solverName='lm'"):
        trainingOptions("lm")
    x, y = _blobs(30)
    layers = list(_mlp().layers)
    net, info = trainNetwork(_sscb(x), y, layers, o)
    assert isinstance(net, fa.Network) and len(info.training_loss) == 9


def test_digits_demo_runs(capsys):
    """The README demo, shortened: the conv layer array trains on NumPy and gives the same
    predictions on array_api_strict."""
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    acc = demo.main(["--epochs", "2", "--other", "array_api_strict"])
    out = capsys.readouterr().out
    assert acc > 90
    assert "test predictions agree on 450/450 images" in out


def test_network_and_data_in_different_libraries_is_a_clear_error():
    import array_api_strict as xps

    x, y = _blobs(12)
    net = _mlp().initialize()  # NumPy float32 weights
    with pytest.raises(TypeError, match=r"learnable \['fc_1'\]\['weights'\] is a numpy array.*"
                                        r"inputs are array_api_strict"):
        fa.train(net, _sscb(x, xps), y, TrainingOptions(max_epochs=1, **_QUIET))


def test_text_progress_bar_without_tqdm(monkeypatch, capsys):
    import importlib

    tr = importlib.import_module("fmtarray.training.progress")
    real = tr.importlib.util.find_spec
    monkeypatch.setattr(tr.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tqdm" else real(name, *a))
    x, y = _blobs(30)
    fa.train(_mlp(), _sscb(x), y, TrainingOptions(max_epochs=2, mini_batch_size=10, verbose=False,
                                                  progress=True))
    err = capsys.readouterr().err
    assert "[##############################] 6/6" in err and "epoch 2/2 loss" in err


@pytest.mark.parametrize("fmt,memory", [("BSSC", (32, 5, 4, 3)), ("SSCB", (5, 4, 3, 32)),
                                        ("CB", (10, 32)), ("BC", (32, 10)),
                                        ("SSBC", (5, 4, 32, 3))])
def test_mini_batch_gather_keeps_the_memory_order(fmt, memory):
    from fmtarray.training.data import Batches

    host = np.random.default_rng(0).standard_normal(memory).astype(np.float32)
    a = FormattedArray(host, fmt)
    order = np.random.default_rng(1).permutation(32)
    got = Batches(a).get(order, 3, 19)
    ax = a.format.index("B")
    np.testing.assert_array_equal(got.data, np.take(a.data, order[3:19], axis=ax))
    assert got.format == a.format
    # the batch is laid out as the data is: batch dim outermost for "B…" memory
    if fmt.startswith("B"):
        assert np.moveaxis(got.data, ax, 0).flags.c_contiguous


@pytest.mark.parametrize("values,expected", [
    ([1.0, 2.0], ""), ([3e38, 3e38], ""),  # finite values whose float32 sum overflows
    ([1.0, np.nan], "NaN"), ([np.inf, 1.0], "inf"), ([np.inf, -np.inf], "inf"),
    ([np.nan, np.inf], "NaN")])
def test_nonfinite_check_names_what_it_finds(values, expected):
    from fmtarray.training.loop import _nonfinite

    a = np.array(values, dtype=np.float32)
    assert _nonfinite(a) == expected
    assert _nonfinite(FormattedArray(a, "C")) == expected


def test_flatten_paths_name_each_key_as_written():
    from fmtarray.autodiff import _flatten

    a = FormattedArray(np.ones(2, np.float32), "C")
    for _ in range(2):  # the second time from the path cache
        assert [p for p, _ in _flatten({"w": a, 0: [a, (a,)]}, "t")] == [
            "t['w']", "t[0][0]", "t[0][1][0]"]
        assert [p for p, _ in _flatten({False: a, 1.0: a}, "t")] == ["t[False]", "t[1.0]"]


def test_factor_tables_are_checked_once_then_reused():
    """train() checks a factor tree once (factor_table) and hands the solver that table
    every step: the solver takes it as it is when it covers the learnables, checks it
    like any tree when it does not, and the update equals the one from the tree."""
    from fmtarray.training.solvers import FactorTable, _factor_table, factor_table

    w = {"a": {"w": FormattedArray(np.ones(3, np.float32))},
         "b": [FormattedArray(np.full(2, 2.0, np.float32))]}
    g = {"a": {"w": FormattedArray(np.full(3, 0.5, np.float32))},
         "b": [FormattedArray(np.ones(2, np.float32))]}
    tree = {"a": {"w": 0.5}, "b": [0.0]}
    table = factor_table(tree, w, "learn-rate factor")
    assert isinstance(table, FactorTable)
    assert table == {"arg['a']['w']": 0.5, "arg['b'][0]": 0.0}
    assert _factor_table(table, list(table), "learn-rate factor") is table
    with pytest.raises(ValueError, match="no factor for"):
        _factor_table(table, [*table, "arg['c']"], "learn-rate factor")
    with pytest.raises(ValueError, match=r"learn-rate factor for \['a'\]\['w'\] must be .*>= 0"):
        factor_table({"a": {"w": -1.0}, "b": [1.0]}, w, "learn-rate factor")
    by_tree = sgdm(learn_rate=0.1, l2_regularization=0).update(w, g, tree)
    by_table = sgdm(learn_rate=0.1, l2_regularization=0).update(w, g, table)
    np.testing.assert_array_equal(_np(by_table["a"]["w"]), _np(by_tree["a"]["w"]))
    np.testing.assert_allclose(_np(by_tree["a"]["w"]), 1.0 - 0.1 * 0.5 * 0.5, rtol=1e-7)
    assert by_table["b"][0] is w["b"][0]  # frozen: the very same object
