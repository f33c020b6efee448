"""The paper's Figure 2 and 3 values as read off its figures, and the plots and summaries that set the measured
curves against them."""
from __future__ import annotations

import statistics
from pathlib import Path

from .. import runs
from ..inspect.plots import figure_png

# Figure 2, read off (PAPER.md): panel -> {(method, split, samples): ELBO}. "any" where the paper's figure does
# not separate train and test at that point.
PAPER_FIG2 = {
    ("mnist", 3): {("aevb", "any", 1e7): -138.5, ("aevb", "train", 1e8): -130.5, ("aevb", "test", 1e8): -133.6,
                   ("wake_sleep", "any", 1e8): -140.5},
    ("mnist", 5): {("aevb", "any", 1e6): -141.2, ("aevb", "any", 1e7): -124.0, ("aevb", "train", 1e8): -116.7,
                   ("aevb", "test", 1e8): -119.2, ("wake_sleep", "any", 1e8): -122.3},
    ("mnist", 10): {("aevb", "any", 1e6): -130.1, ("aevb", "any", 1e7): -108.0, ("aevb", "train", 1e8): -100.9,
                    ("aevb", "test", 1e8): -103.8, ("wake_sleep", "any", 1e8): -107.4},
    ("mnist", 20): {("aevb", "any", 1e6): -125.8, ("aevb", "any", 1e7): -104.6, ("aevb", "train", 1e8): -98.3,
                    ("aevb", "test", 1e8): -98.5, ("wake_sleep", "any", 1e8): -104.4},
    ("mnist", 200): {("aevb", "any", 1e6): -121.5, ("aevb", "any", 1e7): -103.3, ("aevb", "train", 1e8): -98.8,
                     ("aevb", "test", 1e8): -100.4, ("wake_sleep", "any", 1e8): -104.3},
    ("frey", 2): {("aevb", "any", 1e6): 668, ("aevb", "any", 1e7): 834, ("aevb", "train", 1e8): 932,
                  ("aevb", "test", 1e8): 872, ("wake_sleep", "any", 1e8): 580},
    ("frey", 5): {("aevb", "any", 1e6): 740, ("aevb", "any", 1e7): 1060, ("aevb", "train", 1e8): 1226,
                  ("aevb", "test", 1e8): 1113, ("wake_sleep", "any", 1e8): 580},
    ("frey", 10): {("aevb", "any", 1e6): 780, ("aevb", "any", 1e7): 1210, ("aevb", "train", 1e8): 1453,
                   ("aevb", "test", 1e8): 1310, ("wake_sleep", "any", 1e8): 580},
    ("frey", 20): {("aevb", "any", 1e6): 740, ("aevb", "any", 1e7): 1250, ("aevb", "train", 1e8): 1480,
                   ("aevb", "test", 1e8): 1313, ("wake_sleep", "any", 1e8): 580},
}
# Figure 3, read off: (N_train, method, split) -> log p(x) at the end of the paper's run (6e7-6.8e7 datapoints).
PAPER_FIG3 = {
    (1000, "aevb", "train"): -109.1, (1000, "aevb", "test"): -143.2,
    (1000, "mcem", "train"): -109.0, (1000, "mcem", "test"): -141.5,
    (1000, "wake_sleep", "train"): -125.5, (1000, "wake_sleep", "test"): -144.8,
    (50000, "aevb", "train"): -130.9, (50000, "aevb", "test"): -137.9,
    (50000, "mcem", "train"): -146.9, (50000, "mcem", "test"): -148.4,
    (50000, "wake_sleep", "train"): -136.9, (50000, "wake_sleep", "test"): -141.0,
}
METHOD_LABELS = {"aevb": "AEVB", "wake_sleep": "wake-sleep", "mcem": "MCEM"}


def _fig2_curves(rows: list[dict], reduce=statistics.fmean) -> dict:
    """fig2 rows (as returned, or as read back from fig2.csv) -> {(dataset, Nz): {(method, split): {samples: elbo}}},
    where elbo is `reduce` (the mean; min and max give the range) of the seeds' values at that point."""
    values: dict = {}
    for r in rows:
        panel = values.setdefault((r["dataset"], int(r["latent_dim"])), {})
        panel.setdefault((r["method"], r["split"]), {}).setdefault(int(r["samples_seen"]), []).append(float(r["elbo"]))
    return {key: {curve: {n: reduce(v) for n, v in points.items()} for curve, points in panel.items()}
            for key, panel in values.items()}


def _fig2_seeds(rows: list[dict]) -> dict:
    """{(dataset, Nz): number of seeds} (rows from a CSV without a seed column count as one seed)."""
    seeds: dict = {}
    for r in rows:
        seeds.setdefault((r["dataset"], int(r["latent_dim"])), set()).add(str(r.get("seed", 0)))
    return {key: len(s) for key, s in seeds.items()}


def plot_fig2(rows: list[dict], path: Path) -> Path:
    """One panel per (dataset, Nz): the measured curves and the paper's read-off values as markers."""
    from matplotlib.figure import Figure

    curves, low, high = (_fig2_curves(rows, f) for f in (statistics.fmean, min, max))
    seeds = _fig2_seeds(rows)
    panels = sorted(curves)
    fig = Figure(figsize=(3.6 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    colors = {"aevb": "tab:red", "wake_sleep": "tab:blue"}
    for ax, (dataset, nz) in zip(axes[0], panels):
        for method in ("aevb", "wake_sleep"):
            for split, style in (("train", "--"), ("test", "-")):
                curve = curves[(dataset, nz)].get((method, split))
                if curve:
                    x, y = zip(*sorted(curve.items()))
                    ax.plot(x, y, style, color=colors[method], label=f"{METHOD_LABELS[method]} {split}")
                    if seeds[(dataset, nz)] > 1 and split == "test":  # the seeds' range around the mean
                        lo, hi = low[(dataset, nz)][(method, split)], high[(dataset, nz)][(method, split)]
                        ax.fill_between(x, [lo[n] for n in x], [hi[n] for n in x], color=colors[method], alpha=0.2,
                                        linewidth=0)
        for (method, split, n), value in PAPER_FIG2.get((dataset, nz), {}).items():
            marker = {"any": "o", "train": "^", "test": "s"}[split]
            ax.plot([n], [value], marker, color=colors[method], markeredgecolor="black", markersize=6)
        ys = [elbo for curve in curves[(dataset, nz)].values() for elbo in curve.values()]
        ref = list(PAPER_FIG2.get((dataset, nz), {}).values())
        top = max(ys + ref)
        ax.set_ylim(min(ref + [top - 80]) - 10 if dataset == "mnist" else min(ref) - 150, top + 5)
        ax.set_xscale("log")
        n_seeds = f", mean of {seeds[(dataset, nz)]} seeds" if seeds[(dataset, nz)] > 1 else ""
        ax.set_title(f"{'MNIST' if dataset == 'mnist' else 'Frey Face'}, $N_z$ = {nz}{n_seeds}",
                     **({"fontsize": 10} if n_seeds else {}))
        ax.set_xlabel("training datapoints evaluated")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ELBO per datapoint (nats)")
    axes[0][0].plot([], [], "o", color="grey", markeredgecolor="black", label="paper (read off)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    runs.write_bytes(path, figure_png(fig, dpi=110))
    return path


def fig2_summary(rows: list[dict]) -> list[dict]:
    """The acceptance checks of Figure 2, one dict per (dataset, Nz) panel.

    For AEVB: the test and train ELBO at 1e6 and 1e7 datapoints (None where that point was not logged) and the
    paper's read-off value there. For wake-sleep: its test ELBO at its last logged point. `min_gap`: the smallest
    AEVB minus wake-sleep ELBO over both splits at the points from 1e6 on that both logged (None when there are none).
    With several seeds every value is the mean over seeds; `seeds` counts them and `aevb_test_<n>_range` is the
    (lowest, highest) seed's test ELBO.
    """
    out = []
    low, high, seeds = _fig2_curves(rows, min), _fig2_curves(rows, max), _fig2_seeds(rows)
    for (dataset, nz), c in sorted(_fig2_curves(rows).items()):
        paper = PAPER_FIG2.get((dataset, nz), {})
        row = {"dataset": dataset, "latent_dim": nz, "seeds": seeds[(dataset, nz)]}
        for n, tag in ((1_000_000, "1e6"), (10_000_000, "1e7")):
            for split in ("test", "train"):
                row[f"aevb_{split}_{tag}"] = c.get(("aevb", split), {}).get(n)
            test = ("aevb", "test")
            row[f"aevb_test_{tag}_range"] = ((low[(dataset, nz)][test][n], high[(dataset, nz)][test][n])
                                             if row[f"aevb_test_{tag}"] is not None else None)
            row[f"paper_{tag}"] = paper.get(("aevb", "any", float(n)))
        ws_test = c.get(("wake_sleep", "test"), {})
        last = max(ws_test, default=None)
        row["wake_sleep_samples"], row["wake_sleep_test"] = last, ws_test.get(last)
        gaps = []
        for split in ("train", "test"):
            aevb, ws = c.get(("aevb", split), {}), c.get(("wake_sleep", split), {})
            gaps += [aevb[n] - ws[n] for n in aevb.keys() & ws.keys() if n >= 1_000_000]
        row["min_gap"] = min(gaps, default=None)
        out.append(row)
    return out


def format_fig2_summary(summary: list[dict]) -> str:
    """fig2_summary as a Markdown table: measured test (train) ELBO against the paper's, and the wake-sleep gap.
    With several seeds: the means, and the seeds' test range in brackets."""
    def num(v):
        return "-" if v is None else f"{v:.2f}"

    lines = ["| panel | AEVB @1e6 test (train) | paper @1e6 | AEVB @1e7 test (train) | paper @1e7 "
             "| wake-sleep test at end | min AEVB - wake-sleep from 1e6 |", "|---|---|---|---|---|---|---|"]
    for r in summary:
        several = r.get("seeds", 1) > 1
        cells = [f"{r['dataset']} Nz={r['latent_dim']}" + (f", mean of {r['seeds']} seeds" if several else "")]
        for tag in ("1e6", "1e7"):
            spread = r.get(f"aevb_test_{tag}_range")
            spread = f" [{spread[0]:.2f}, {spread[1]:.2f}]" if several and spread else ""
            cells += [f"{num(r[f'aevb_test_{tag}'])}{spread} ({num(r[f'aevb_train_{tag}'])})",
                      num(r[f"paper_{tag}"])]
        ws = "-" if r["wake_sleep_samples"] is None else f"{num(r['wake_sleep_test'])} @{r['wake_sleep_samples']:.0e}"
        cells += [ws, num(r["min_gap"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- Figure 3 -------------------------------------------------------------------------------------------------


def plot_fig3(rows: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    n_trains = sorted({r["n_train"] for r in rows})
    fig = Figure(figsize=(4.5 * len(n_trains), 3.6))
    axes = fig.subplots(1, len(n_trains), squeeze=False)
    colors = {"aevb": "tab:red", "wake_sleep": "tab:blue", "mcem": "tab:green"}
    for ax, n in zip(axes[0], n_trains):
        for method in colors:
            for split, style in (("train", "--"), ("test", "-")):
                pts = sorted((r["samples_seen"], r["log_px"]) for r in rows
                             if (r["n_train"], r["method"], r["split"]) == (n, method, split))
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, style, color=colors[method], label=f"{METHOD_LABELS[method]} {split}")
                paper = PAPER_FIG3.get((n, method, split))
                if paper is not None:
                    ax.plot([6e7], [paper], "^" if split == "train" else "s", color=colors[method],
                            markeredgecolor="black")
        # The first evaluation comes before any update for AEVB and wake-sleep (Adagrad's warm-up); leave it out of
        # the y range so that the curves' later differences stay visible.
        first = min(r["samples_seen"] for r in rows)
        ys = [r["log_px"] for r in rows if r["n_train"] == n and r["samples_seen"] > first]
        ys += [v for (m, *_), v in PAPER_FIG3.items() if m == n]
        if ys:
            ax.set_ylim(min(ys) - 5, max(ys) + 5)
        ax.set_xscale("log")
        ax.set_title(f"MNIST, $N_z$ = 3, $N_{{train}}$ = {n}")
        ax.set_xlabel("training datapoints evaluated")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("log p(x), Appendix D estimator (nats)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    runs.write_bytes(path, figure_png(fig, dpi=110))
    return path


# -- Figures 4 and 5 ------------------------------------------------------------------------------------------
