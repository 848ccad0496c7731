"""One SGD step of fastnn against PyTorch's autograd and torch.optim.SGD (float64).

Skipped when torch is not installed; .ci/run installs it so CI always runs these.
"""
import numpy as np
import pytest
from conftest import one_hot

from fastnn import Network

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_ACT = {
    "identity": lambda z: z,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.05),
    "softmax": lambda z: torch.softmax(z, dim=1),
}
OUTPUT_LOSS = [("sigmoid", "mse"), ("tanh", "mse"), ("relu", "mse"), ("leaky_relu", "mse"),
               ("identity", "mse"), ("softmax", "mse"), ("sigmoid", "cross_entropy"),
               ("softmax", "cross_entropy")]


def torch_loss(z, a, y, output, loss):
    """The mean over the batch of fastnn's per-sample cost, written with torch's own losses."""
    if loss == "mse":
        return 0.5 * F.mse_loss(a, y, reduction="sum") / len(y)
    if output == "sigmoid":
        return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(y)
    return F.cross_entropy(z, y)          # softmax output: z are the logits


@pytest.mark.parametrize("output, loss", OUTPUT_LOSS)
@pytest.mark.parametrize("hidden", ["sigmoid", "tanh", "relu", "leaky_relu"])
def test_one_sgd_step_matches_torch(hidden, output, loss):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 8))
    if output == "softmax":
        Y = one_hot(rng.integers(0, 5, 16), 5)
    elif loss == "cross_entropy":
        Y = rng.uniform(0, 1, (16, 5))
    else:
        Y = rng.normal(size=(16, 5))
    net = Network([8, 7, 6, 5], activation=hidden, output=output, loss=loss, dtype="float64",
                  seed=4, slope=0.05)

    layers = [torch.nn.Linear(i, o, dtype=torch.float64) for i, o in zip(net.sizes, net.sizes[1:])]
    with torch.no_grad():
        for lin, W, b in zip(layers, net.weights, net.biases):
            lin.weight.copy_(torch.from_numpy(W.T.copy()))   # torch stores (out, in)
            lin.bias.copy_(torch.from_numpy(b.copy()))
    params = [p for lin in layers for p in lin.parameters()]
    opt = torch.optim.SGD(params, lr=0.7)
    a = torch.from_numpy(X)
    for l, lin in enumerate(layers):
        z = lin(a)
        a = TORCH_ACT[net.activations[l]](z)
    cost = torch_loss(z, a, torch.from_numpy(Y), output, loss)
    opt.zero_grad()
    cost.backward()
    opt.step()

    hist = net.fit(X, Y, epochs=1, batch_size=16, lr=0.7, shuffle=False)
    assert hist["loss"][0] == pytest.approx(cost.item(), rel=1e-12)
    for lin, W, b in zip(layers, net.weights, net.biases):
        np.testing.assert_allclose(W, lin.weight.detach().numpy().T, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b, lin.bias.detach().numpy(), rtol=1e-12, atol=1e-14)
