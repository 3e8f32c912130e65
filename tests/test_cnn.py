"""model=cnn: the Numba and JAX kernels against the NumPy reference, the reference
against finite differences, the presets, and what combiners ask of the record
(alignment of conv channels, per-example gradients for Fisher)."""

from __future__ import annotations

import numpy as np
import pytest

import fastdist
from fastdist.combiners.alignment import permute, weight_matching
from fastdist.combiners.fisher import diagonal_fisher
from fastdist.errors import ConfigError
from fastdist.models.cnn import cnn
from fastdist.models.kernels.numba_cnn import NumbaCNNKernel
from fastdist.models.kernels.reference_cnn import forward, loss_and_grad
from fastdist.run.records import build_model

# (sample shape, options, batch): 1-D and 2-D, strides above the kernel size, padding
# as wide as the kernel, pools that do not divide the map, channels-first inputs,
# no dense hidden layer, batches of one.
CASES = [
    ((40,), dict(channels=[5, 4], kernel_sizes=[5, 3], strides=[2], padding=[1], pool=[1]), 3),
    (
        (9, 10),
        dict(
            channels=[3, 4],
            kernel_sizes=[3, 2],
            strides=[1, 2],
            padding=[1, 0],
            pool=[2, 1],
            hidden=[],
        ),
        4,
    ),  # fmt: skip
    ((2, 7, 8), dict(channels=[3], kernel_sizes=[3], strides=[2], padding=[3], pool=[3]), 1),
    ((3, 12), dict(channels=[4, 2], kernel_sizes=[3], pool=[2], spatial_dims=1), 2),
    ((11,), dict(channels=[2, 3], kernel_sizes=[1, 2], strides=[3, 1], padding=[0, 1]), 5),
    ((8, 8), dict(channels=[6], kernel_sizes=[8], padding=[0], pool=[1], hidden=[5, 4]), 1),
    # Winograd (3x3, stride 1, unpadded, even output, after the first layer): channels
    # growing and shrinking, a non-square map, a pool after it, batches of one.
    ((3, 10, 12), dict(channels=[4, 5], kernel_sizes=[3], padding=[0], pool=[1, 2]), 3),
    ((12, 8), dict(channels=[6, 3, 5], kernel_sizes=[3], padding=[0], pool=[1]), 1),
    ((2, 9, 9), dict(channels=[5, 4], kernel_sizes=[2, 3], padding=[0], pool=[1], hidden=[]), 2),
]


def _case(shape, options, batch, seed=0, n_classes=3):
    rng = np.random.default_rng(seed)
    model = cnn(input_shape=shape, n_classes=n_classes, **options)
    params = model.init(seed)
    params += 0.05 * rng.standard_normal(model.size).astype(np.float32)  # non-zero biases
    x = rng.standard_normal((batch, model.n_inputs)).astype(np.float32)
    y = rng.integers(0, n_classes, batch).astype(np.int32)
    return model, params, x, y


@pytest.mark.parametrize(("shape", "options", "batch"), CASES)
def test_numba_matches_reference(shape, options, batch):
    model, params, x, y = _case(shape, options, batch)
    loss_ref, grad_ref, correct_ref = loss_and_grad(model, params, x, y)
    kernel = NumbaCNNKernel(model, max_batch=batch + 2)  # a smaller batch than the workspace
    grad = np.full(model.size, np.nan, dtype=np.float32)
    loss, correct = kernel.loss_and_grad(params, x, y, grad)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert correct == correct_ref
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)
    logits = np.empty((batch, model.n_classes), dtype=np.float32)
    kernel.logits(params, x, logits)
    np.testing.assert_allclose(logits, forward(model, params, x)[0], rtol=1e-5, atol=1e-5)


def test_winograd_takes_the_layers_it_applies_to_and_is_deterministic():
    from fastdist.models.kernels.numba_winograd import winograd_applies

    took = []
    for shape, options, _ in CASES:
        model = cnn(input_shape=shape, n_classes=3, **options)
        took.append([winograd_applies(c, layer == 0) for layer, c in enumerate(model.convs)])
    assert took[-3:] == [[False, True], [False, True, True], [False, True]]
    assert not any(any(t) for t in took[:-3])
    w3 = build_model(fastdist.compose(["model=cnn_mnist"]).model, (28, 28), 10)
    assert [winograd_applies(c, layer == 0) for layer, c in enumerate(w3.convs)] == [False, True]
    model, params, x, y = _case(*CASES[-3][:2], 3)
    kernel = NumbaCNNKernel(model, max_batch=3)
    grads = [np.empty(model.size, dtype=np.float32) for _ in range(2)]
    runs = [kernel.loss_and_grad(params, x, y, g) for g in grads]
    assert runs[0] == runs[1]
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("step", [1, 2])
def test_winograd_backward_weights_summed_over_chunks(step):
    """Chunks of samples for Winograd backward-weights (the tests' maps are small enough
    for one chunk; W3's take one sample each): the sums over chunks against the
    reference, and deterministic."""
    model, params, x, y = _case(*CASES[-2][:2], 5)
    kernel = NumbaCNNKernel(model, max_batch=5)
    offs = kernel._workspace(5)[0]
    assert offs[1:, 5].all()
    offs[1:, 2] = step  # samples per backward-weights chunk: 5 samples in 5 or 3 chunks
    loss_ref, grad_ref, _ = loss_and_grad(model, params, x, y)
    grads = [np.full(model.size, np.nan, dtype=np.float32) for _ in range(2)]
    runs = [kernel.loss_and_grad(params, x, y, g) for g in grads]
    assert runs[0] == runs[1] and runs[0][0] == pytest.approx(loss_ref, rel=1e-5)
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_allclose(grads[0], grad_ref, rtol=1e-4, atol=1e-6)


def _methods(model, batch=2):
    return NumbaCNNKernel(model, max_batch=batch)._workspace(batch)[0][:, 5].tolist()


@pytest.mark.parametrize("cout", [16, 32, 64, 5])
@pytest.mark.parametrize("padding", [0, 1])
def test_direct_first_layer_matches_reference(cout, padding):
    """The direct kernel (first layer, one channel, stride 1): the copies compiled for
    3x3 kernels with 16, 32 or 64 channels, and the generic body (5 channels), padded
    and not, pooled after it, against the reference."""
    from fastdist.models.kernels.numba_cnn_workspace import DIRECT

    options = dict(channels=[cout], kernel_sizes=[3], padding=[padding], pool=[2], hidden=[4])
    model, params, x, y = _case((9, 8), options, 3)
    assert _methods(model) == [DIRECT]
    loss_ref, grad_ref, correct_ref = loss_and_grad(model, params, x, y)
    grad = np.full(model.size, np.nan, dtype=np.float32)
    loss, correct = NumbaCNNKernel(model, max_batch=3).loss_and_grad(params, x, y, grad)
    assert loss == pytest.approx(loss_ref, rel=1e-5) and correct == correct_ref
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)


def test_each_layer_convolves_as_expected_and_w3_stays_within_1e6_of_float64():
    """W3 (cnn_mnist): a direct first layer and a Winograd second; the MNIST-1D CNN's
    strided layers stay on im2col (so its results are bitwise those of before). W3's
    gradient against the float64 reference, relative to its largest entry: the direct and
    Winograd sums are in a different order from im2col + GEMM's, not less accurate."""
    from fastdist.models.kernels.numba_cnn_workspace import DIRECT, IM2COL, WINOGRAD

    mnist1d = build_model(fastdist.compose(["model=cnn1d_mnist1d"]).model, (40,), 10)
    assert set(_methods(mnist1d)) == {IM2COL}
    w3 = build_model(fastdist.compose(["model=cnn_mnist"]).model, (28, 28), 10)
    assert _methods(w3) == [DIRECT, WINOGRAD]
    rng = np.random.default_rng(0)
    params = w3.init(0) + 0.01 * rng.standard_normal(w3.size).astype(np.float32)
    x = rng.standard_normal((2, w3.n_inputs)).astype(np.float32)
    y = rng.integers(0, 10, 2).astype(np.int32)
    grad = np.empty(w3.size, dtype=np.float32)
    loss, _ = NumbaCNNKernel(w3, max_batch=2).loss_and_grad(params, x, y, grad)
    loss64, grad64, _ = loss_and_grad(w3, params.astype(np.float64), x.astype(np.float64), y)
    assert loss == pytest.approx(loss64, rel=1e-6)
    assert np.max(np.abs(grad - grad64)) <= 1e-6 * np.max(np.abs(grad64))


def test_max_pool_backward_is_the_four_sweeps_to_the_bit():
    """The fused pool backward against what it replaced, in NumPy: zero d(conv output),
    route each pooled gradient to its window's argmax, apply the ReLU mask, then the
    bias gradient summed row by row in float32 (cumsum keeps that order). A 7x7 map
    under a 2x2 pool leaves its last row and column out of every window."""
    from fastdist.models.kernels.numba_maxpool import max_pool, max_pool_backward

    model = cnn(input_shape=(4, 9, 9), n_classes=3, channels=[6], kernel_sizes=[3], padding=[0])
    c = model.convs[0]
    assert (c.ho, c.hp, c.qh) == (7, 3, 2)
    g = np.asarray(c.row(), dtype=np.int64)
    batch, rows = 3, 3 * c.ho * c.wo
    rng = np.random.default_rng(0)
    z = np.maximum(rng.standard_normal(rows * c.cout), 0).astype(np.float32)  # ReLU output
    p = np.empty(batch * c.hp * c.wp * c.cout, dtype=np.float32)
    arg = np.empty(p.size, dtype=np.int64)
    max_pool(z, g, batch, p, arg)
    dp = rng.standard_normal(p.size).astype(np.float32)
    dz = np.full(rows * c.cout, np.nan, dtype=np.float32)
    gb = np.full(c.cout, np.nan, dtype=np.float32)
    max_pool_backward(dp, arg, z, g, batch, dz, gb)
    want = np.zeros(rows * c.cout, dtype=np.float32)
    want[arg] = dp
    want = np.where(z > 0, want, np.float32(0))
    np.testing.assert_array_equal(dz, want)
    want_gb = np.cumsum(want.reshape(rows, c.cout), axis=0, dtype=np.float32)[-1]
    np.testing.assert_array_equal(gb, want_gb)


@pytest.mark.parametrize(("shape", "options", "batch"), CASES[:4])
def test_jax_matches_reference(shape, options, batch):
    pytest.importorskip("jax")
    from fastdist.models.kernels.jax_cnn import JaxCNNKernel

    model, params, x, y = _case(shape, options, batch)
    loss_ref, grad_ref, correct_ref = loss_and_grad(model, params, x, y)
    kernel = model.kernel("jax", batch)
    assert isinstance(kernel, JaxCNNKernel)
    grad = np.full(model.size, np.nan, dtype=np.float32)
    loss, correct = kernel.loss_and_grad(params, x, y, grad)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert correct == correct_ref
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)
    logits = np.empty((batch, model.n_classes), dtype=np.float32)
    kernel.logits(params, x, logits)
    np.testing.assert_allclose(logits, forward(model, params, x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("shape", "options", "batch"), CASES[:3])
def test_reference_matches_finite_differences(shape, options, batch):
    model, params, x, y = _case(shape, options, batch, seed=1)
    theta = params.astype(np.float64)
    _, grad, _ = loss_and_grad(model, theta, x, y)
    rng = np.random.default_rng(2)
    eps = 1e-6
    for i in rng.choice(model.size, size=25, replace=False):
        step = np.zeros_like(theta)
        step[i] = eps
        up, down = (
            loss_and_grad(model, theta + step, x, y)[0],
            loss_and_grad(model, theta - step, x, y)[0],
        )
        assert grad[i] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)


def test_prediction_in_chunks_and_empty_batches():
    model, params, x, y = _case((6, 6), dict(channels=[2], pool=[2]), 150)
    out = np.empty((150, 3), dtype=np.float32)
    NumbaCNNKernel(model, max_batch=150).logits(params, x, out)  # chunks of 64
    np.testing.assert_allclose(out, forward(model, params, x)[0], rtol=1e-5, atol=1e-5)
    kernel = NumbaCNNKernel(model, max_batch=4)
    grad = np.ones(model.size, dtype=np.float32)
    assert kernel.loss_and_grad(params, x[:0], y[:0], grad) == (0.0, 0) and not grad.any()
    with pytest.raises(ValueError, match="exceeds the workspace"):
        kernel.loss_and_grad(params, x[:5], y[:5], grad)


def test_reference_backend_is_the_oracle_predicting_in_chunks():
    model, params, x, y = _case((6, 6), dict(channels=[2], pool=[2]), 300)
    kernel = model.kernel("reference", 4)
    grad = np.empty(model.size, dtype=np.float32)
    loss, correct = kernel.loss_and_grad(params, x[:4], y[:4], grad)
    want_loss, want_grad, want_correct = loss_and_grad(model, params, x[:4], y[:4])
    assert (loss, correct) == (want_loss, want_correct)
    np.testing.assert_array_equal(grad, want_grad)
    out = np.empty((300, 3), dtype=np.float32)
    kernel.logits(params, x, out)  # 256 rows at a time: the reference keeps every map
    chunks = [forward(model, params, x[:256])[0], forward(model, params, x[256:])[0]]
    np.testing.assert_array_equal(out, np.concatenate(chunks))


def test_presets_have_the_published_shapes():
    cfg = fastdist.compose(["model=cnn_mnist", "dataset=synthetic"])
    mnist = build_model(cfg.model, (28, 28), 10)
    assert mnist.layout.size == 1_199_882  # the PyTorch example's parameter count
    assert mnist.dense == (9216, 128, 10)
    cfg = fastdist.compose(["model=cnn1d_mnist1d", "dataset=mnist1d"])
    small = build_model(cfg.model, (40,), 10)
    assert small.dense == (125, 10) and small.layout.size == 5210
    assert [c.wo for c in small.convs] == [19, 10, 5]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kernel_sizes=[3, 3, 3]), "one value per conv layer"),
        (dict(channels=[]), "at least one size"),
        (dict(kernel_sizes=[9]), "leaves no output"),
        (dict(strides=[0]), "must be >= 1"),
        (dict(spatial_dims=3), "spatial_dims must be 1 or 2"),
        (dict(channels="wide"), "list of integers"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        cnn(input_shape=(8, 8), n_classes=10, **options)
    with pytest.raises(ConfigError, match="cannot read samples"):
        cnn(input_shape=(2, 3, 4, 5), n_classes=10)


# --- combiners: alignment of channels, per-example gradients ------------------------


def _random_perms(model, seed):
    rng = np.random.default_rng(seed)
    spec = model.permutation_spec()
    sizes = [model.layout.shape(spec.axes(p)[0][0])[spec.axes(p)[0][1]] for p in spec.names]
    return [rng.permutation(n) for n in sizes]


@pytest.mark.parametrize(
    ("shape", "options"), [(CASES[0][0], CASES[0][1]), (CASES[1][0], CASES[1][1])]
)
def test_permuted_channels_keep_the_function_and_alignment_recovers_them(shape, options):
    model, theta, x, _ = _case(shape, dict(options, hidden=[6]), 5)
    assert model.permutation_spec().names[-1] == "h1"
    permuted = permute(model, theta, _random_perms(model, 3))
    assert not np.array_equal(permuted, theta)
    np.testing.assert_allclose(
        forward(model, permuted, x)[0], forward(model, theta, x)[0], rtol=1e-5, atol=1e-5
    )
    perms = weight_matching(model, theta, permuted, seed=1)
    np.testing.assert_array_equal(permute(model, permuted, perms), theta)


def test_fisher_matches_brute_force_on_a_tiny_cnn():
    model, theta, x, y = _case((7, 6), dict(channels=[2, 3], pool=[1, 2], hidden=[4]), 9)
    brute = np.mean(
        [loss_and_grad(model, theta.astype(np.float64), x[i : i + 1], y[i : i + 1])[1] ** 2
         for i in range(9)],
        axis=0,
    )  # fmt: skip
    got = diagonal_fisher(model, theta, x, y, n_samples=9, labels="true")
    np.testing.assert_allclose(got, brute, rtol=1e-6, atol=1e-12)


# --- end to end: every combiner trains and evaluates the CNN -------------------------

_TINY_CNN = [
    "model=cnn",
    "model.channels=[4]",
    "model.pool=[2]",
    "model.hidden=[]",
    "dataset=digits",
]


@pytest.mark.parametrize("combiner", ["grad_avg", "local_sgd", "hogwild", "weight_avg"])
def test_every_combiner_trains_the_cnn(combiner):
    """Combiners that act during training each train; the one-shot ones then combine
    the same trained workers (weight_avg's run, with a validation split for soups)."""
    from fastdist.combiners import aligned_avg, ensemble, fisher_avg, soup_greedy, soup_uniform
    from fastdist.run.combine import combine
    from fastdist.run.preparation import prepare_data

    overrides = [*_TINY_CNN, f"combiner={combiner}", "workers=2", "epochs=4", "diagnostics=false"]
    overrides.append("validation_fraction=0.1")
    cfg = fastdist.compose(overrides)
    run = fastdist.train(cfg)
    assert run.metrics["test_accuracy"] > 0.8, run.metrics  # chance is 0.1
    if combiner != "weight_avg":
        return
    data = prepare_data(cfg, 2, 0.1)
    for other in (ensemble(), soup_uniform(), soup_greedy(), aligned_avg(), fisher_avg()):
        scores = combine(other, run.worker_params, run.model, data, run.samples_seen, 0, False)
        assert scores["test_accuracy"] > 0.8, (other.name, scores)


def test_w3_gives_synthetic_images_their_shape():
    from fastdist.data.datasets import load_dataset

    cfg = fastdist.compose(["experiment=w3", "dataset.n_train=16", "dataset.n_test=4"])
    assert cfg.model._target_ == "fastdist.models.cnn.cnn" and cfg.batch_size == 64
    data = load_dataset(cfg.dataset)
    assert data.input_shape == (28, 28) and data.x_train.shape == (16, 784)
    bad = fastdist.compose(["experiment=w3", "dataset.sample_shape=[27,28]"])
    with pytest.raises(ConfigError, match="must hold n_features=784"):
        load_dataset(bad.dataset)
