"""load_mnist: the real files, the search path, and checksum failures."""
import shutil

import numpy as np
import pytest
from conftest import MNIST_DIR

from fastnn.datasets import MNIST_FILES, find_mnist, load_mnist, mnist_search_path
from fastnn.exceptions import DataError, DatasetNotFound


def test_loads_the_real_mnist(mnist):
    (X, y), (X_test, y_test) = mnist
    assert X.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X.dtype == np.uint8 and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    # well-known facts about MNIST: the first training label is 5, the first test label 7
    assert y[0] == 5 and y_test[0] == 7
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    places = mnist_search_path(tmp_path / "given")
    assert places[0] == tmp_path / "given"
    assert places[1:3] == [tmp_path / "env", tmp_path / "env" / "mnist"]
    assert MNIST_DIR in places
    assert places[-1] == tmp_path / "cache" / "fastnn" / "mnist"


def test_finds_files_through_the_environment(tmp_path, monkeypatch):
    target = tmp_path / "mine" / "mnist"
    shutil.copytree(MNIST_DIR, target)
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "mine"))
    assert find_mnist() == target
    assert find_mnist(tmp_path / "nothing-here") == target


def test_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fastnn.datasets.SOURCE_TREE_MNIST", tmp_path / "src" / "data" / "mnist")
    with pytest.raises(DatasetNotFound) as info:
        load_mnist(tmp_path / "given")
    message = str(info.value)
    for place in (tmp_path / "given", tmp_path / "src" / "data" / "mnist",
                  tmp_path / "data" / "mnist", tmp_path / "cache" / "fastnn" / "mnist"):
        assert str(place) in message
    assert "fastnn download mnist" in message


def test_corrupt_file_is_refused_by_its_checksum(tmp_path):
    target = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, target)
    name = MNIST_FILES["test_labels"][0]
    data = bytearray((target / name).read_bytes())
    data[-1] ^= 1
    (target / name).write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{name} is corrupt: MD5 .*, expected ec29112d"):
        load_mnist(target)
