"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed). Each function returns
PNG bytes; sizes grow with the number of classes so that no two labels overlap."""

from __future__ import annotations

import io

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

DPI = 110


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def recall_curves(curves: dict[str, dict[str, dict[int, float]]]) -> bytes:
    """curves[label]["i2t"|"t2i"] = {K: recall %}: one panel per direction, a line per label."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    titles = {"i2t": "image → text", "t2i": "text → image"}
    for ax, direction in zip(axes, ("i2t", "t2i")):
        for label, by_dir in sorted(curves.items()):
            points = sorted(by_dir.get(direction, {}).items())
            if points:
                ks, values = zip(*points)
                ax.plot(ks, values, marker="o", label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("K (log scale)")
        ax.set_title(f"recall@K, {titles[direction]}")
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("recall@K (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Retrieval")
    return _png(fig)


def class_accuracy_bars(title: str, names: list[str], accuracy: list[float], support: list[int]) -> bytes:
    """Horizontal bars (names on the y axis never overlap), best class on top."""
    order = sorted(range(len(names)), key=lambda i: (np.nan_to_num(accuracy[i], nan=-1), names[i]))
    height = max(2.5, 0.28 * len(names) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height))
    y = np.arange(len(order))
    values = [0 if np.isnan(accuracy[i]) else accuracy[i] for i in order]
    ax.barh(y, values, color="#4c72b0")
    for yi, i in zip(y, order):
        ax.text(min(values[yi], 100) + 1 if values[yi] < 88 else values[yi] - 1, yi,
                "n/a" if np.isnan(accuracy[i]) else f"{accuracy[i]:.1f}", va="center",
                ha="left" if values[yi] < 88 else "right", fontsize=7, color="black" if values[yi] < 88 else "white")
    ax.set_yticks(y, [f"{names[i]} (n={support[i]})" for i in order], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def confusion_matrix(title: str, names: list[str], counts: np.ndarray) -> bytes:
    """Row-normalised (each true class sums to 100 %); counts written in the cells when few classes."""
    n = len(names)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, np.maximum(support, 1)) * 100
    side = max(4.5, 0.32 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    fontsize = 9 if n <= 15 else 7 if n <= 30 else 5
    ax.set_xticks(np.arange(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 15:
        for t in range(n):
            for p in range(n):
                if counts[t, p]:
                    ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                            color="white" if share[t, p] > 60 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    return _png(fig)


def calibration_curves(curves: dict[str, list[tuple[float, float, int]]]) -> bytes:
    """curves[label] = [(mean confidence, accuracy or precision, rows)] per confidence bin: one line
    per label, marker area by rows, and the diagonal of perfect calibration."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for label, points in sorted(curves.items()):
        x, y, n = zip(*sorted(points))
        line, = ax.plot(x, y, marker="", label=label)
        ax.scatter(x, y, s=[10 + 90 * k / max(n) for k in n], color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (bin mean)")
    ax.set_ylabel("accuracy / precision in the bin")
    ax.set_title("Pseudo-labels: accuracy against confidence")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)
