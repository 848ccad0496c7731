"""The textbook baseline: Nielsen's network.py algorithm, one sample at a time.

Column vectors, a backpropagation per sample, the mini-batch gradient
summed over the samples in a Python loop: how chapter 1 of *Neural
Networks and Deep Learning* teaches it. Written here from the maths (with
this project's activations and losses) so every benchmark configuration
can run it.
"""
import numpy as np


def _act(name, z):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "relu":
        return np.maximum(z, 0)
    if name == "softmax":
        e = np.exp(z - z.max())
        return e / e.sum()
    raise ValueError(name)


def _act_prime(name, a):
    return a * (1 - a) if name == "sigmoid" else (a > 0).astype(a.dtype)


class TextbookNetwork:
    """sizes, per-layer activation names, a loss ('mse' or 'cross_entropy')."""

    def __init__(self, sizes, activations, loss, seed=0):
        rng = np.random.default_rng(seed)
        self.activations, self.loss = activations, loss
        self.biases = [rng.standard_normal((o, 1)).astype(np.float32) for o in sizes[1:]]
        self.weights = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)
                        for i, o in zip(sizes[:-1], sizes[1:])]

    def feedforward(self, a):
        for b, w, name in zip(self.biases, self.weights, self.activations):
            a = _act(name, w @ a + b)
        return a

    def backprop(self, x, y):
        """(nabla_b, nabla_w) of one sample's cost."""
        activation, activations = x, [x]
        for b, w, name in zip(self.biases, self.weights, self.activations):
            activation = _act(name, w @ activation + b)
            activations.append(activation)
        delta = activations[-1] - y
        if self.loss == "mse":
            delta = delta * _act_prime(self.activations[-1], activations[-1])
        nabla_b, nabla_w = [None] * len(self.weights), [None] * len(self.weights)
        for l in range(len(self.weights) - 1, -1, -1):
            nabla_b[l] = delta
            nabla_w[l] = delta @ activations[l].T
            if l > 0:
                delta = (self.weights[l].T @ delta) * _act_prime(self.activations[l - 1], activations[l])
        return nabla_b, nabla_w

    def update_mini_batch(self, batch, lr):
        nabla_b = [np.zeros_like(b) for b in self.biases]
        nabla_w = [np.zeros_like(w) for w in self.weights]
        for x, y in batch:
            db, dw = self.backprop(x, y)
            nabla_b = [nb + d for nb, d in zip(nabla_b, db)]
            nabla_w = [nw + d for nw, d in zip(nabla_w, dw)]
        step = lr / len(batch)
        self.weights = [w - step * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - step * nb for b, nb in zip(self.biases, nabla_b)]

    def epoch(self, X, Y, batch_size, lr, rng):
        """One epoch of SGD over rows of X (n, I) and one-hot Y (n, O)."""
        data = [(x[:, None], y[:, None]) for x, y in zip(X, Y)]
        order = rng.permutation(len(data))
        for start in range(0, len(data), batch_size):
            self.update_mini_batch([data[i] for i in order[start:start + batch_size]], lr)

    def predict(self, X):
        return np.hstack([self.feedforward(x[:, None]) for x in X]).T
