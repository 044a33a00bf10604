"""Demo artifacts for each seeded run: a confusion matrix and a ROC curve (PNG, drawn here with
zlib only, so the demo needs no plotting library), the metrics as JSON and a predictions CSV."""

from __future__ import annotations

import json
import random
import struct
import zlib

from .models import Run
from .services.artifacts import artifact_upload, run_artifact_root

SIZE = 96


def png(pixels: list[list[tuple[int, int, int]]]) -> bytes:
    """An RGB PNG from rows of (r, g, b)."""
    height, width = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(channel for pixel in row for channel in pixel) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def confusion_matrix(counts: list[list[int]]) -> bytes:
    top = max(max(row) for row in counts) or 1
    cell = SIZE // len(counts)
    pixels = []
    for y in range(SIZE):
        row = []
        for x in range(SIZE):
            share = counts[min(y // cell, len(counts) - 1)][min(x // cell, len(counts) - 1)] / top
            edge = x % cell in (0, cell - 1) or y % cell in (0, cell - 1)
            row.append((255, 255, 255) if edge else (int(240 - 200 * share), int(245 - 150 * share), 255))
        pixels.append(row)
    return png(pixels)


def roc_curve(auc: float) -> bytes:
    pixels = [[(255, 255, 255)] * SIZE for _ in range(SIZE)]
    power = max(0.05, (1 - auc) / max(auc, 1e-6))  # tpr = fpr ** power has area 1 / (1 + power)
    for x in range(SIZE):
        pixels[SIZE - 1 - x][x] = (190, 190, 190)  # chance diagonal
        tpr = (x / (SIZE - 1)) ** power
        y = SIZE - 1 - int(tpr * (SIZE - 1))
        for dy in (-1, 0, 1):
            if 0 <= y + dy < SIZE:
                pixels[y + dy][x] = (37, 99, 235)
    return png(pixels)


def demo_artifacts_log(*, run: Run, score: float) -> None:
    rng = random.Random(run.name)  # its own stream: the rest of the demo stays as it was
    auc = min(0.99, max(0.55, score))  # drawn as an AUC whatever the metric
    root = run_artifact_root(run)
    positives, negatives = 400, 600
    tp = int(positives * min(0.99, auc - 0.1 + rng.random() * 0.05))
    tn = int(negatives * min(0.99, auc - 0.05 + rng.random() * 0.05))
    files = {
        "plots/confusion_matrix.png": confusion_matrix([[tn, negatives - tn], [positives - tp, tp]]),
        "plots/roc_curve.png": roc_curve(auc),
        "metrics.json": json.dumps({"val_auc": round(auc, 4), "tp": tp, "tn": tn}, indent=2).encode(),
        "predictions.csv": ("customer_id,score,label\n" + "".join(
            f"{1000 + i},{rng.random():.4f},{int(rng.random() < 0.4)}\n" for i in range(50)
        )).encode(),
    }
    for relative, data in files.items():
        artifact_upload(team=run.team, key=f"{root}/{relative}", chunks=[data], length=len(data))
