"""A small synthetic dataset in the CIFAR-10 python layout, for tests and CI (no download needed).

Each of the 10 classes is a distinct, learnable pattern (a coloured shape on a textured background, at a
random position and size, with noise), so reconstruction improves with training and linear probes beat
chance, while every file is written exactly as torchvision's CIFAR-10 reader expects.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES = ["red-square", "green-square", "blue-square", "red-disc", "green-disc", "blue-disc",
           "h-stripes", "v-stripes", "checker", "cross"]


def _image(c: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    bg = rng.uniform(0.2, 0.6, size=3)
    img = np.ones((32, 32, 3), np.float32) * bg
    cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 9)
    colour = np.eye(3)[c % 3] * 0.9 + 0.05
    if c < 3:
        shape = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
    elif c < 6:
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    elif c == 6:
        shape, colour = (yy // 4) % 2 == 0, rng.uniform(0.6, 1.0, 3)
    elif c == 7:
        shape, colour = (xx // 4) % 2 == 0, rng.uniform(0.6, 1.0, 3)
    elif c == 8:
        shape, colour = ((yy // 6) + (xx // 6)) % 2 == 0, rng.uniform(0.6, 1.0, 3)
    else:
        shape, colour = (np.abs(yy - cy) < 2.5) | (np.abs(xx - cx) < 2.5), rng.uniform(0.6, 1.0, 3)
    img[shape] = colour
    img += rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(2, 0, 1).reshape(-1)


def write_toy_cifar(root, *, per_class_train: int = 100, per_class_test: int = 20, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` (5 train batches, test_batch, batches.meta); returns that folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def split(n_per_class):
        labels = np.tile(np.arange(10), n_per_class)
        rng.shuffle(labels)
        return np.stack([_image(int(c), rng) for c in labels]), labels.tolist()

    train_x, train_y = split(per_class_train)
    chunks = np.array_split(np.arange(len(train_y)), 5)
    for k, idx in enumerate(chunks, start=1):
        _dump(folder / f"data_batch_{k}", train_x[idx], [train_y[i] for i in idx], f"training batch {k} of 5")
    test_x, test_y = split(per_class_test)
    _dump(folder / "test_batch", test_x, test_y, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": len(chunks[0]), "label_names": CLASSES, "num_vis": 3072}, f, protocol=2)
    return folder


def _dump(path: Path, data: np.ndarray, labels: list, name: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({"batch_label": name, "labels": labels, "data": np.ascontiguousarray(data),
                     "filenames": [f"toy_{i:05d}.png" for i in range(len(labels))]}, f, protocol=2)
