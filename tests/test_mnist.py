"""End-to-end results on the real MNIST (slow: run with --runslow)."""
import pytest

from fastnn import Network


@pytest.mark.slow
def test_nielsen_chapter1_reaches_94_5_percent(mnist):
    # [784, 30, 10], sigmoid, quadratic cost, 30 epochs, batch 10, eta = 3.0, on the
    # first 50,000 training images; Nielsen reports 95.42 % at best.
    (X, y), (X_test, y_test) = mnist
    net = Network([784, 30, 10], activation="sigmoid", loss="mse", seed=0)
    hist = net.fit(X[:50000], y[:50000], epochs=30, batch_size=10, lr=3.0,
                   validation_data=(X_test, y_test))
    accuracy = net.evaluate(X_test, y_test)["accuracy"]
    print(f"Nielsen chapter 1: test accuracy {accuracy:.2%}, best epoch "
          f"{max(hist['val_accuracy']):.2%}")
    assert accuracy >= 0.945
