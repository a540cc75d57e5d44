"""The ResNet-style digits network of ``examples/resnet_digits.py`` (the same graph code,
imported from the example): predictions and gradients against the same network written
independently in torch (float64, inference and training mode), its graph display, a short
training run, ``Network.to("torch")`` (and CUDA when available), and ``save``/``load``."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray

_EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "resnet_digits.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("resnet_digits_example", _EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ex = _load_example()

# (name, kind) of every layer, in the order the torch reference applies them
CONV = ("conv_stem", "conv_1a", "conv_1b", "conv_2b")
BN = ("bn_stem", "bn_1a", "bn_1b", "bn_2a", "bn_2b")


def _np(a):
    return np.asarray(fa._backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _randomised_net(rng, n=6):
    """The example's graph in float64 with every learnable and statistic set to random,
    non-trivial values (biases, offsets, means ≠ 0; scales, variances ≠ 1), so that a
    layout or ordering mistake anywhere changes the output. Returns (net, x NCHW host)."""
    net = ex.resnet_graph()
    net.initialize(dtype=np.float64, seed=3)
    params = {k: {p: FormattedArray(rng.standard_normal(tuple(v.shape)) * 0.5, v.format)
                  for p, v in d.items()} for k, d in net.learnables().items()}
    for b in BN:
        params[b]["scale"] = FormattedArray(rng.uniform(0.5, 1.5, (1, 1, ex.WIDTH)))
    net.set_learnables(params)
    state = {b: {"trained_mean": rng.standard_normal((1, 1, ex.WIDTH)) * 0.3,
                 "trained_variance": rng.uniform(0.5, 2.0, (1, 1, ex.WIDTH))} for b in BN}
    state["imageinput"] = {"mean": rng.uniform(0.0, 0.5, (8, 8, 1))}  # one mean per pixel
    net.update_state(state)
    x = rng.uniform(0.0, 1.0, (n, 1, 8, 8))
    return net, x


def _torch_resnet(net, x, training):
    """The same network in torch (float64), written from torch.nn.functional with the
    fmtarray learnables (MATLAB layouts) as leaves. Returns (CB output, learnable leaves,
    input leaf, updated running statistics)."""
    import torch
    import torch.nn.functional as F

    p = {k: {n: torch.tensor(_np(v), requires_grad=True) for n, v in d.items()}
         for k, d in net.learnables().items()}
    st = {k: {n: torch.tensor(_np(v)).reshape(-1).clone() for n, v in d.items()}
          for k, d in net.state().items() if k in BN}
    xt = torch.tensor(x, requires_grad=True)

    def conv(t, name):
        w = p[name]["weights"].permute(3, 2, 0, 1)  # h×w×C×F → F×C×h×w
        k = w.shape[-1]
        return F.conv2d(t, w, p[name]["bias"].reshape(-1), padding=k // 2)

    def dwconv(t, name):
        w = p[name]["weights"]  # h×w×Cg×Fg×G → (G·Fg)×Cg×h×w, group-major filters
        h, ww, cg, fg, g = w.shape
        w = w.permute(4, 3, 2, 0, 1).reshape(g * fg, cg, h, ww)
        b = p[name]["bias"].permute(3, 2, 0, 1).reshape(-1)  # 1×1×Fg×G → G·Fg
        return F.conv2d(t, w, b, padding=h // 2, groups=g)

    def bn(t, name):
        return F.batch_norm(t, st[name]["trained_mean"], st[name]["trained_variance"],
                            p[name]["scale"].reshape(-1), p[name]["offset"].reshape(-1),
                            training=training, momentum=0.1, eps=1e-5)

    mean = torch.tensor(_np(net["imageinput"].mean)).permute(2, 0, 1)  # h×w×c → c×h×w
    t = xt - mean
    r0 = torch.relu(bn(conv(t, "conv_stem"), "bn_stem"))
    a = torch.relu(bn(conv(r0, "conv_1a"), "bn_1a"))
    r1 = torch.relu(bn(conv(a, "conv_1b"), "bn_1b") + r0)
    a = torch.relu(bn(dwconv(r1, "dwconv_2"), "bn_2a"))
    r2 = torch.relu(bn(conv(a, "conv_2b"), "bn_2b") + r1)
    feat = r2.mean(dim=(2, 3))  # global average pooling: N×C
    z = feat @ p["fc"]["weights"].T + p["fc"]["bias"].reshape(-1)
    return torch.softmax(z, dim=1).T, p, xt, st


def _as_sscb(x):
    return FormattedArray(np.ascontiguousarray(x.transpose(2, 3, 1, 0)), "SSCB")  # NCHW → SSCB


@pytest.mark.parametrize("training", [False, True], ids=["predict", "forward"])
def test_predictions_and_gradients_equal_torch_float64(training):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    net, x = _randomised_net(rng)
    w = rng.standard_normal((10, x.shape[0]))
    W = FormattedArray(w, "CB")
    xs = _as_sscb(x)

    def loss(params, xin):
        if training:
            y, state = net.forward(xin, learnables=params)
        else:
            y, state = net.predict(xin, learnables=params), {}
        return fa.sum(fa.log(y) * W), (y, state)

    (_, (y, state)), (g, gx) = fa.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        net.learnables(), xs)
    ref, tp, tx, tst = _torch_resnet(net, x, training)
    (torch.log(ref) * torch.tensor(w)).sum().backward()

    assert y.format == "CB" and y.shape == (10, x.shape[0])
    assert _rel(_np(y), ref.detach().numpy()) <= 1e-12
    worst = {}
    for lname, d in tp.items():
        # relative to the layer's largest gradient entry: in training mode a convolution's
        # bias before a batch norm has gradient exactly 0 (the batch mean removes it), so
        # both sides hold only rounding noise there (asserted below)
        scale = max(float(np.max(np.abs(t.grad.numpy()))) for t in d.values())
        for pname, t in d.items():
            a, b = _np(g[lname][pname]), t.grad.numpy()
            assert a.shape == tuple(t.shape) and a.dtype == np.float64
            worst[f"{lname}.{pname}"] = float(np.max(np.abs(a - b))) / scale
            if training and lname in CONV[:3] + ("dwconv_2", "conv_2b") and pname == "bias":
                assert np.max(np.abs(a)) <= 1e-12 * scale
            else:
                assert np.max(np.abs(b)) > 1e-3 * scale  # a real gradient, not noise
    assert len(worst) == 2 * 4 + 2 + 2 * 5 + 2  # 4 convs, dwconv, 5 batch norms, fc
    assert max(worst.values()) <= 1e-9, max(worst.items(), key=lambda kv: kv[1])
    assert gx.format == "SSCB"
    assert _rel(_np(gx), tx.grad.numpy().transpose(2, 3, 1, 0)) <= 1e-9
    if training:  # the running statistics returned as state equal torch's in-place update
        assert set(state) == set(BN)
        for b in BN:
            for s in ("trained_mean", "trained_variance"):
                assert _rel(_np(state[b][s]).reshape(-1), tst[b][s].numpy()) <= 1e-12
        # and the batch statistics differ from the trained ones (training mode is real)
        assert _rel(_np(y), _np(net.predict(xs))) > 1e-3
    else:
        assert state == {}


def test_graph_display_lists_layers_and_connections():
    net = ex.resnet_graph()
    net.initialize()
    text = str(net)
    lines = [ln.strip() for ln in text.splitlines()]
    assert lines[0] == "21x1 Layer array with layers:"
    assert any(ln.startswith("12   'dwconv_2'     2-D Grouped Convolution") and
               "channel-wise 3×3 convolutions" in ln for ln in lines)
    assert any(ln.startswith("19   'gap'") and "2-D Global Average Pooling" in ln for ln in lines)
    assert "22x2 table of connections:" in lines
    for src, dst in (("relu_stem", "add_1/in2"), ("bn_1b", "add_1/in1"),
                     ("relu_1", "dwconv_2"), ("relu_1", "add_2/in2"), ("bn_2b", "add_2/in1"),
                     ("relu_2", "gap")):
        assert (src, dst) in net.connections
        assert any(ln.split() == [src, dst] for ln in lines), (src, dst)
    assert "Inputs: 'imageinput'" in lines and "Outputs: 'softmax'" in lines
    assert net.input_names == ("imageinput",) and net.output_names == ("softmax",)
    assert net["dwconv_2"].num_groups == ex.WIDTH  # channel-wise resolved to 16 groups


@pytest.fixture(scope="module")
def digits():
    return ex.load_digits_split()


@pytest.fixture(scope="module")
def trained(digits):
    """The example's network after two epochs of the example's options (a few seconds)."""
    import array_api_compat.numpy as npx

    x_train, x_test, y_train, y_test = digits
    net = ex.resnet_graph()
    before, _ = ex.accuracy(net.initialize(seed=0), x_test, y_test)
    net, hist = fa.train(net, ex.to_sscb(x_train, npx), y_train,
                         ex.training_options(2, learn_rate_schedule="none"))
    return net, hist, before


def test_short_training_run_learns(trained, digits):
    net, hist, before = trained
    _, x_test, _, y_test = digits
    acc, _ = ex.accuracy(net, x_test, y_test)
    loss = np.asarray(hist.training_loss)
    assert len(loss) == 2 * (1347 // 32)
    assert before < 30.0           # an untrained network is near chance (10 %)
    assert acc >= 60.0, acc        # two epochs (measured 74.7 %): far above chance
    assert loss[-10:].mean() < 0.5 * loss[:10].mean()


def test_to_torch_float32_and_float64(trained, digits):
    pytest.importorskip("torch")
    import array_api_compat.numpy as npx
    import array_api_compat.torch as tx

    net = trained[0]
    x_test = digits[1]
    ref = _np(net.predict(ex.to_sscb(x_test, npx)))
    tnet = net.to("torch")
    y = tnet.predict(ex.to_sscb(x_test, tx))
    assert fa._backend.library_name(y.data) == "torch" and _np(y).dtype == np.float32
    assert np.max(np.abs(_np(y) - ref)) <= 1e-6
    assert {k: {n: fa._backend.library_name(v.data) for n, v in d.items()}
            for k, d in tnet.state().items()}["imageinput"] == {"mean": "torch"}

    net64 = ex.as_float64(net)
    x64 = x_test.astype(np.float64)
    ref64 = _np(net64.predict(ex.to_sscb(x64, npx)))
    assert ref64.dtype == np.float64 and np.max(np.abs(ref64 - ref)) <= 1e-5
    y64 = _np(net64.to("torch").predict(ex.to_sscb(x64, tx)))
    assert y64.dtype == np.float64 and _rel(y64, ref64) <= 1e-12


def test_to_cuda_when_available(trained, digits):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import array_api_compat.numpy as npx

    net = trained[0]
    x_test = digits[1]
    ref = _np(net.predict(ex.to_sscb(x_test, npx)))
    cnet = net.to("torch", device="cuda")
    y = cnet.predict(FormattedArray(torch.from_numpy(x_test[..., None]).to("cuda"), "BSSC"))
    assert y.data.is_cuda
    assert np.max(np.abs(_np(y) - ref)) <= 1e-6


def test_save_load_round_trip(trained, digits, tmp_path):
    import array_api_compat.numpy as npx

    net = trained[0]
    path = tmp_path / "resnet.fmtnet"
    fa.save(net, path)
    back = fa.load(path)
    x = ex.to_sscb(digits[1], npx)
    assert np.array_equal(_np(back.predict(x)), _np(net.predict(x)))
    assert back.layer_names == net.layer_names and back.connections == net.connections
    assert list(back.learnables_table()) == list(net.learnables_table())
    for tree, other in ((net.learnables(), back.learnables()), (net.state(), back.state())):
        assert set(tree) == set(other)
        for k, d in tree.items():
            for n, v in d.items():
                assert np.array_equal(_np(v), _np(other[k][n])) and _np(v).dtype == _np(other[k][n]).dtype
    assert str(back) == str(net)
