#!/usr/bin/env python3
"""Fashion-MNIST (Debian's `dataset-fashion-mnist`, MIT) as ImageFolder
trees for `frostgrad train`, with the Python standard library only.

    apt-get install dataset-fashion-mnist
    scripts/fashion_mnist_folders.py OUT CLASSES TRAIN_PER_CLASS VAL_PER_CLASS

CLASSES is a comma-separated list of label numbers (0 T-shirt/top,
1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker,
8 Bag, 9 Ankle boot). Writes OUT/train/<n>_<name>/<index>.png from the
first TRAIN_PER_CLASS training images of each class and OUT/val/... from
the first VAL_PER_CLASS test images (28x28 greyscale PNG; the loader turns
them into RGB as PIL's convert("RGB") does).
"""

import gzip
import os
import struct
import sys
import zlib

SRC = "/usr/share/datasets/fashion-mnist"
NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2049:
        return n, data[8:], 1
    rows, cols = struct.unpack(">II", data[8:16])
    return n, data[16:], rows * cols


def png(path, pixels, w, h):
    def chunk(kind, body):
        c = struct.pack(">I", len(body)) + kind + body
        return c + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[y * w : (y + 1) * w] for y in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def write(out, split, prefix, classes, per_class):
    n, images, size = idx(os.path.join(SRC, f"{prefix}-images-idx3-ubyte.gz"))
    _, labels, _ = idx(os.path.join(SRC, f"{prefix}-labels-idx1-ubyte.gz"))
    counts = {c: 0 for c in classes}
    for i in range(n):
        c = labels[i]
        if c in counts and counts[c] < per_class:
            d = os.path.join(out, split, f"{c}_{NAMES[c]}")
            os.makedirs(d, exist_ok=True)
            png(os.path.join(d, f"{i:05d}.png"), images[i * size : (i + 1) * size], 28, 28)
            counts[c] += 1
    return counts


def main():
    out, classes, n_train, n_val = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    classes = [int(c) for c in classes.split(",")]
    print("train", write(out, "train", "train", classes, n_train))
    print("val", write(out, "val", "t10k", classes, n_val))


if __name__ == "__main__":
    main()
