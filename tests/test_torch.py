"""fastnn against PyTorch's autograd and torch.optim, in float64.

Skipped when torch is not installed; .ci/run installs it so CI always runs these.
"""
import numpy as np
import pytest
from conftest import needs, one_hot

from fastnn import Network

torch = needs("torch")
F = torch.nn.functional

SLOPE = 0.05
TORCH_ACT = {
    "identity": lambda z: z,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda z: F.leaky_relu(z, SLOPE),
    "softmax": lambda z: torch.softmax(z, dim=1),
}
OUTPUT_LOSS = [("sigmoid", "mse"), ("tanh", "mse"), ("relu", "mse"), ("leaky_relu", "mse"),
               ("identity", "mse"), ("softmax", "mse"), ("sigmoid", "cross_entropy"),
               ("softmax", "cross_entropy")]
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "rprop"]
LR = {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.1, "adam": 0.01, "rprop": 0.02}


def torch_loss(z, a, y, output, loss):
    """The mean over the batch of fastnn's per-sample cost, with torch's own losses."""
    if loss == "mse":
        return 0.5 * F.mse_loss(a, y, reduction="sum") / len(y)
    if output == "sigmoid":
        return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(y)
    return F.cross_entropy(z, y)          # softmax output: z are the logits


def data(output, loss, n, rng):
    X = rng.normal(size=(n, 8))
    if output == "softmax" and loss == "cross_entropy":
        return X, one_hot(rng.integers(0, 5, n), 5)
    if loss == "cross_entropy":
        return X, rng.uniform(0, 1, (n, 5))
    return X, rng.normal(size=(n, 5))


def torch_layers(net):
    layers = [torch.nn.Linear(i, o, dtype=torch.float64) for i, o in zip(net.sizes, net.sizes[1:])]
    with torch.no_grad():
        for lin, W, b in zip(layers, net.weights, net.biases):
            lin.weight.copy_(torch.from_numpy(W.T.copy()))   # torch stores (out, in)
            lin.bias.copy_(torch.from_numpy(b.copy()))
    return layers


def torch_optimizer(name, layers, lr, weight_decay):
    # L2 as torch's weight decay on the weights only: fastnn never decays biases
    groups = [{"params": [l.weight for l in layers], "weight_decay": weight_decay},
              {"params": [l.bias for l in layers], "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=name == "nesterov")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.Rprop([p for g in groups for p in g["params"]], lr=lr,
                             etas=(0.5, 1.2), step_sizes=(1e-6, 50))


def every_pair():
    """The 200 combinations of hidden activation, output and loss, and
    optimizer. The fast suite runs the 40 whose indices sum to 0 mod 5, which
    hold every pair of the three (every optimizer with every output, and
    each with every hidden activation); --runslow runs all of them."""
    assert len(HIDDEN) == len(OPTIMIZERS) == 5
    return [pytest.param(hidden, output, loss, optimizer,
                         marks=() if (h + o + k) % 5 == 0 else pytest.mark.slow)
            for h, hidden in enumerate(HIDDEN) for o, (output, loss) in enumerate(OUTPUT_LOSS)
            for k, optimizer in enumerate(OPTIMIZERS)]


@pytest.mark.parametrize("hidden, output, loss, optimizer", every_pair())
def test_three_steps_match_torch(hidden, output, loss, optimizer):
    rng = np.random.default_rng(0)
    m = 6
    X, Y = data(output, loss, 3 * m, rng)
    n = len(X)
    l2, l1 = 0.3, 0.2
    lr = LR[optimizer]
    net = Network([8, 7, 6, 5], activation=hidden, output=output, loss=loss, dtype="float64",
                  seed=4, slope=SLOPE)
    layers = torch_layers(net)
    # rprop has no weight_decay in torch: its L2 goes into the loss, like L1 for all
    opt = torch_optimizer(optimizer, layers, lr, 0.0 if optimizer == "rprop" else l2 / n)
    full_batch = optimizer == "rprop"
    for step in range(3):
        rows = slice(None) if full_batch else slice(step * m, (step + 1) * m)
        a = torch.from_numpy(X[rows])
        for l, lin in enumerate(layers):
            z = lin(a)
            a = TORCH_ACT[net.activations[l]](z)
        cost = torch_loss(z, a, torch.from_numpy(Y[rows]), output, loss)
        cost = cost + l1 / n * sum(lin.weight.abs().sum() for lin in layers)
        if optimizer == "rprop":
            cost = cost + l2 / (2 * n) * sum((lin.weight ** 2).sum() for lin in layers)
        opt.zero_grad()
        cost.backward()
        opt.step()

    kwargs = dict(lr=lr, optimizer=optimizer, l2=l2, l1=l1, shuffle=False)
    if full_batch:
        net.fit(X, Y, epochs=3, **kwargs)
    else:
        net.fit(X, Y, epochs=1, batch_size=m, **kwargs)
    for lin, W, b in zip(layers, net.weights, net.biases):
        np.testing.assert_allclose(W, lin.weight.detach().numpy().T, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(b, lin.bias.detach().numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("output, loss", OUTPUT_LOSS)
def test_epoch_loss_is_torch_loss(output, loss):
    # the loss fit reports for a one-batch epoch is torch's loss before the step
    rng = np.random.default_rng(1)
    X, Y = data(output, loss, 16, rng)
    net = Network([8, 7, 6, 5], activation="tanh", output=output, loss=loss, dtype="float64",
                  seed=4, slope=SLOPE)
    a = torch.from_numpy(X)
    for l, lin in enumerate(torch_layers(net)):
        z = lin(a)
        a = TORCH_ACT[net.activations[l]](z)
    cost = torch_loss(z, a, torch.from_numpy(Y), output, loss).item()
    hist = net.fit(X, Y, epochs=1, batch_size=16, lr=0.7, shuffle=False)
    assert hist["loss"][0] == pytest.approx(cost, rel=1e-12)
