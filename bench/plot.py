"""The results plot: throughput and pickup latency per system, as one PNG."""

from __future__ import annotations

from pathlib import Path

THROUGHPUT = [
    ("enqueue_single_jobs_per_s", "enqueue\n1/call"),
    ("enqueue_batch_jobs_per_s", "enqueue\n1000/call"),
    ("drain_1proc_jobs_per_s", "drain\n1 proc"),
    ("drain_2proc_jobs_per_s", "drain\n2 procs"),
]
LATENCY = [("pickup_p50_ms", "p50"), ("pickup_p95_ms", "p95"), ("pickup_p99_ms", "p99")]


def plot_results(results: list[dict], path: Path) -> None:
    """Grouped bars (log scale) of throughput, and pickup percentiles, with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(r["system"] for r in results))
    by_key = {(r["system"], r["metric"]): r for r in results}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [4, 3]})
    for ax, panel, ylabel, log in (
        (axes[0], THROUGHPUT, "jobs/s (log scale)", True),
        (axes[1], LATENCY, "pickup latency, ms (log scale)", True),
    ):
        width = 0.8 / len(systems)
        for i, system in enumerate(systems):
            xs, ys, lo, hi = [], [], [], []
            for j, (metric, _) in enumerate(panel):
                row = by_key.get((system, metric))
                if row is None:
                    continue
                xs.append(j + i * width)
                ys.append(row["value"])
                lo.append(row["value"] - row.get("min", row["value"]))
                hi.append(row.get("max", row["value"]) - row["value"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=system)
        ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(panel))])
        ax.set_xticklabels([label for _, label in panel])
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    axes[0].set_title("throughput (higher is better)")
    axes[1].set_title("enqueue commit → job start (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
