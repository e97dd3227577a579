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


def plot_scale(run: dict, path: Path) -> None:
    """The scale run: each read's p50 against the number of finished tasks (log-log); drain
    and pickup against it; and, with a soak, claim time and sizes over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = run["sizes"]
    panels = 3 if run.get("soak") else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5))
    ns = [s["n"] for s in sizes]
    if sizes:
        for read in sizes[0]["reads"]:
            axes[0].plot(ns, [s["reads"][read]["p50"] for s in sizes], marker="o", label=read)
        axes[0].axhline(25, color="grey", linestyle="--", linewidth=1, label="target 25 ms")
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=7)
        drain = axes[1]
        drain.plot(ns, [s["drain_tasks_per_s"] for s in sizes], marker="o", color="C0")
        drain.set_ylabel("drain, tasks/s", color="C0")
        drain.set_xscale("log")
        pickup = drain.twinx()
        for pct, style in (("p50", "-"), ("p99", ":")):
            pickup.plot(ns, [s["pickup_ms"][pct] for s in sizes], style, marker="s",
                        color="C3", label=f"pickup {pct}")  # fmt: skip
        pickup.set_ylabel("pickup, ms", color="C3")
        pickup.legend(fontsize=7, loc="lower left")
    axes[0].set_title("reads, p50 ms (lower is better)")
    axes[0].set_xlabel("finished tasks (3 history rows each)")
    axes[1].set_title("drain and pickup")
    axes[1].set_xlabel("finished tasks")
    if run.get("soak"):
        samples = run["soak"]["samples"]
        t = [s["drained"] for s in samples]
        ax = axes[2]
        ax.plot(t, [s["tasks_table_bytes"] / 1e6 for s in samples], label="tasks heap MB")
        ax.plot(t, [s["tasks_index_bytes"] / 1e6 for s in samples], label="tasks indexes MB")
        ax.plot(t, [s["tasks_claim_index_bytes"] / 1e6 for s in samples], label="claim index MB")
        ax.set_xlabel("tasks drained")
        ax.set_ylabel("MB")
        claim = ax.twinx()
        claim.plot(t, [s["claim_p50_ms"] for s in samples], "k:", label="claim p50 ms")
        claim.set_ylabel("claim p50, ms")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title("soak: sizes and claim time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
