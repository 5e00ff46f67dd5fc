"""`report`: result files -> summary.md, summary.csv and plots; bench files -> their tables; projected
communication time per round on named networks."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

from .errors import UsageError
from .results import READABLE_SCHEMAS
from .compare import METRICS, select

log = logging.getLogger("ssfl_mpi")

# name: (one-way latency in s, bandwidth in bit/s, description)
NETWORKS = {
    "hpc": (2e-6, 100e9, "HPC fabric: 2 us, 100 Gbit/s"),
    "lan": (1e-4, 10e9, "datacenter LAN: 0.1 ms, 10 Gbit/s"),
    "wan": (40e-3, 100e6, "WAN between regions: 40 ms, 100 Mbit/s"),
    "edge": (50e-3, 20e6, "edge uplink: 50 ms, 20 Mbit/s"),
}


def network(spec: str) -> tuple[str, float, float, str]:
    """A profile name, or NAME:LATENCY_MS:MBIT_PER_S for a custom one."""
    if spec in NETWORKS:
        lat, bw, text = NETWORKS[spec]
        return spec, lat, bw, text
    parts = spec.split(":")
    try:
        name, lat_ms, mbit = parts[0], float(parts[1]), float(parts[2])
        if len(parts) != 3 or lat_ms < 0 or mbit <= 0:
            raise ValueError
    except (ValueError, IndexError):
        raise UsageError(f"--network {spec!r}: use one of {', '.join(NETWORKS)} or NAME:LATENCY_MS:MBIT_PER_S "
                         f"(e.g. wan2:40:100)") from None
    return name, lat_ms / 1e3, mbit * 1e6, f"{name}: {lat_ms:g} ms, {mbit:g} Mbit/s"


def projected_comm_s(bytes_up: float, bytes_down: float, clients: int, latency: float, bandwidth: float) -> float:
    """One round's communication on a star network where each client has its own link of this
    profile and the server's is not the bottleneck: the model down, then the update up, each a
    latency plus its bytes over the link; clients in parallel."""
    return 2 * latency + 8 * (bytes_down + bytes_up) / clients / bandwidth


def _load(paths: list[str], metric: str = "acc") -> tuple[list[dict], list[tuple[str, str]], list[str]]:
    """(comparable complete runs, (path, why) of the files left out, benchmark files)."""
    results, benches = [], []
    for path in paths:
        try:
            with h5py.File(path, "r", locking=False) as f:
                is_bench = "bench" in f and f.attrs.get("schema") in READABLE_SCHEMAS
        except OSError as exc:
            raise UsageError(f"cannot open {path!r}: {exc}") from None
        (benches if is_bench else results).append(path)
    sel = select(results, metric)
    runs = [{"path": r.path, "attrs": r.attrs, "config": r.config, "rounds": r.rounds, "acc": r.acc,
             "label": r.label} for r in sel.runs]
    return runs, sel.left_out, benches


def _cells(runs: list[dict]) -> dict:
    cells = defaultdict(list)
    for d in runs:
        sparsity = float(d["attrs"]["sparsity"])
        cells[d["label"], sparsity].append(d)
    return dict(sorted(cells.items(), key=lambda kv: (kv[0][0] != "fedavg (dense)", kv[0][0], kv[0][1])))


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarize(runs: list[dict], *, target: float, networks: list[tuple]) -> list[dict]:
    rows = []
    for (label, sparsity), group in _cells(runs).items():
        final = [d["acc"][np.isfinite(d["acc"])][-1] for d in group]
        best = [np.nanmax(d["acc"]) for d in group]
        mb = [np.mean(d["rounds"]["bytes_up"] + d["rounds"]["bytes_down"]) / 1e6 for d in group]
        to_target = []
        for d in group:
            acc = d["acc"]
            hit = np.flatnonzero(np.nan_to_num(acc, nan=-1) >= target)
            if len(hit):
                cum = np.cumsum(d["rounds"]["bytes_up"] + d["rounds"]["bytes_down"])
                to_target.append(cum[hit[0]] / 1e6)
        m, sd = _mean_sd(final)
        row = {"method": label, "sparsity": sparsity, "seeds": len(group), "final_acc": m, "final_acc_sd": sd,
               "best_acc": float(np.mean(best)), "mb_per_round": float(np.mean(mb)),
               "mb_to_target": float(np.mean(to_target)) if to_target else float("nan"),
               "reached_target": len(to_target),
               "compute_s_per_round": float(np.mean([np.mean(d["rounds"]["time_compute"]) for d in group])),
               "comm_s_per_round": float(np.mean([np.mean(d["rounds"]["time_comm"]) for d in group])),
               "round_s": float(np.mean([np.mean(d["rounds"]["time_round"]) for d in group]))}
        for name, lat, bw, _ in networks:
            clients = group[0]["attrs"]["clients_per_round"]
            row[f"{name}_comm_s"] = float(np.mean([
                projected_comm_s(np.mean(d["rounds"]["bytes_up"]), np.mean(d["rounds"]["bytes_down"]), clients,
                                 lat, bw) for d in group]))
        rows.append(row)
    return rows


def _markdown(rows: list[dict], incomplete, *, target: float, networks: list[tuple], metric: str = "acc") -> str:
    head = ["method", "S", "seeds", "final acc %", "best acc %", "MB/round", f"MB to {100 * target:g}%",
            "compute s/round", "comm s/round"] + [f"{n[0]} comm s/round" for n in networks]
    lines = ["# Summary", "", f"Accuracy (`--metric {metric}`): {METRICS[metric][1]}; mean ± sample std over "
             f"seeds. MB: "
             f"up + down, summed over each round's clients. MB to {100 * target:g}%: cumulative MB when the "
             f"test accuracy first reached it (mean over the seeds that did, their number in brackets).", ""]
    if networks:
        lines += ["Projected communication per round (each client on its own link, model down then update "
                  "up): " + "; ".join(n[3] for n in networks) + ".", ""]
    lines += ["Runs share a row only when every setting but the seed is equal; `seeds` is their number.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        reach = f"{r['mb_to_target']:.2f} [{r['reached_target']}]" if r["reached_target"] else "–"
        cells = [r["method"], f"{r['sparsity']:g}", str(r["seeds"]),
                 f"{100 * r['final_acc']:.1f} ± {100 * r['final_acc_sd']:.1f}", f"{100 * r['best_acc']:.1f}",
                 f"{r['mb_per_round']:.3f}", reach, f"{r['compute_s_per_round']:.3f}",
                 f"{r['comm_s_per_round']:.3f}"] + [f"{r[f'{n[0]}_comm_s']:.3g}" for n in networks]
        lines.append("| " + " | ".join(cells) + " |")
    if incomplete:
        lines += ["", "## Not included", ""]
        lines += [f"- `{p}`: {why}" for p, why in incomplete]
    return "\n".join(lines) + "\n"


def _plots(runs: list[dict], rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cells = _cells(runs)
    labels = sorted({label for label, _ in cells}, key=lambda l: (l != "fedavg (dense)", l))
    colors = {label: plt.cm.tab20(i % 20) for i, label in enumerate(labels)}
    sparsities = sorted({s for _, s in cells if s > 0}) or [0.0]

    def grid(title: str):
        fig, axes = plt.subplots(1, len(sparsities), figsize=(4.5 * len(sparsities), 4), squeeze=False,
                                 sharey=True)
        fig.suptitle(title)
        return fig, axes[0]

    def finish(fig, axes, name: str, xlabel: str, ylabel: str):
        for ax in axes:
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(ylabel)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    def accuracy_panels(title: str, x_of, name: str, xlabel: str, *, log_x: bool = False) -> None:
        """One panel per sparsity: mean test accuracy over seeds against x_of(run), per method."""
        fig, axes = grid(title)
        for ax, s in zip(axes, sparsities):
            ax.set_title(f"sparsity {s:g}")
            for label in labels:
                group = cells.get((label, s)) or cells.get((label, 0.0))
                if group:
                    acc = np.nanmean([d["acc"] for d in group], axis=0)
                    x = np.mean([x_of(d) for d in group], axis=0)
                    ok = ~np.isnan(acc)
                    ax.plot(x[ok], 100 * acc[ok], label=label, color=colors[label], lw=1.2)
            if log_x:
                ax.set_xscale("log")
        finish(fig, axes, name, xlabel, "test accuracy (%)")

    accuracy_panels("Test accuracy per round (mean over seeds)", lambda d: d["rounds"]["round"],
                    "accuracy_vs_round.png", "round")
    accuracy_panels("Test accuracy against the data moved (mean over seeds)",
                    lambda d: np.cumsum(d["rounds"]["bytes_up"] + d["rounds"]["bytes_down"]) / 1e6,
                    "accuracy_vs_mb.png", "cumulative MB, up + down (log)", log_x=True)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in labels:
        pts = sorted((r["sparsity"], r["final_acc"], r["final_acc_sd"]) for r in rows if r["method"] == label)
        if label == "fedavg (dense)" and pts:
            ax.axhline(100 * pts[0][1], color=colors[label], ls="--", label=label)
            continue
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, 100 * np.array(y), yerr=100 * np.array(e), label=label, color=colors[label],
                        marker="o", capsize=3, lw=1.2)
    ax.set_title("Final test accuracy against sparsity (mean ± std over seeds)")
    finish(fig, [ax], "accuracy_vs_sparsity.png", "sparsity (fraction of prunable weights removed)",
           "final test accuracy (%)")

    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(rows)), 4.5))
    names = [f"{r['method']} S={r['sparsity']:g}" for r in rows]
    compute = [r["compute_s_per_round"] for r in rows]
    comm = [r["comm_s_per_round"] for r in rows]
    other = [max(0.0, r["round_s"] - a - b) for r, a, b in zip(rows, compute, comm)]
    x = np.arange(len(rows))
    ax.bar(x, compute, label="local training (slowest worker)")
    ax.bar(x, comm, bottom=compute, label="MPI calls incl. waits (slowest worker)")
    ax.bar(x, other, bottom=np.add(compute, comm), label="rest of the server's round")
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_title("Where a round's time goes (mean per round)")
    finish(fig, [ax], "time_breakdown.png", "", "seconds per round")
    return written


FIRST_COLUMNS = ("transport", "params", "density", "ranks", "workers", "median_s", "median_round_s")


def _read_bench(path: str) -> tuple[str, int, dict]:
    with h5py.File(path, "r", locking=False) as f:
        b = {k: f["bench"][k][()] for k in f["bench"] if k != "samples_s"}
        kind = f.attrs.get("kind", "comm")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        return kind, int(f.attrs.get("world_size", 0)), b


def _bench_plots(paths: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for n, path in enumerate(paths):
        kind, world, b = _read_bench(path)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if kind == "comm":
            transports = [t.decode() if isinstance(t, bytes) else t for t in b["transport"]]
            for t in dict.fromkeys(transports):
                for d in sorted({float(x) for x, tt in zip(b["density"], transports) if tt == t}):
                    sel = [i for i, tt in enumerate(transports) if tt == t and float(b["density"][i]) == d]
                    label = t if t in ("dense", "pickle", "allreduce") else f"{t}, density {d:g}"
                    ax.plot(b["params"][sel], b["median_s"][sel], marker="o", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("model size (float32 values, log)")
            ax.set_ylabel("median seconds per round (log)")
            ax.set_title(f"One round of model traffic per transport ({world} ranks)")
        else:
            ax.plot(b["ranks"], b["median_round_s"], marker="o", label="round")
            ax.plot(b["ranks"], b["median_compute_s"], marker="s", label="local training (slowest worker)")
            ax.plot(b["ranks"], b["median_comm_s"], marker="^", label="MPI calls (slowest worker)")
            ax.set_xlabel("MPI ranks (1 server + workers)")
            ax.set_ylabel("median seconds per round")
            ax.set_title("The same job on more ranks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"bench_{kind}_{n}.png", dpi=120)
        plt.close(fig)


def _bench_md(paths: list[str]) -> str:
    lines = []
    for path in paths:
        kind, world, b = _read_bench(path)
        keys = [k for k in FIRST_COLUMNS if k in b] + [k for k in b if k not in FIRST_COLUMNS]
        lines += [f"## {kind}: `{path}` ({world} ranks)", "", "| " + " | ".join(keys) + " |",
                  "|" + "---|" * len(keys)]
        for i in range(len(b[keys[0]])):
            vals = []
            for k in keys:
                v = b[k][i]
                v = v.decode() if isinstance(v, bytes) else v
                vals.append(f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v))
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def report(paths: list[str], *, out: str, target: float, networks: list[str], plots: bool = True,
           metric: str = "acc", write: bool = True) -> Path:
    """Validate the inputs and options; with write, render summary.md, summary.csv and plots to `out`."""
    runs, incomplete, benches = _load(paths, metric)
    nets = [network(n) for n in networks]
    if not write:
        return Path(out) / "summary.md"
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".ssfl-mpi-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"report --out {out!r} is not a writable folder: {exc.strerror or exc}") from None
    rows = summarize(runs, target=target, networks=nets) if runs else []
    text = (_markdown(rows, incomplete, target=target, networks=nets, metric=metric)
            if runs or incomplete else "# Summary\n")
    if benches:
        text += "\n# Benchmarks\n\n" + _bench_md(benches)
        if plots:
            _bench_plots(benches, out_dir)
    (out_dir / "summary.md").write_text(text)
    if rows:
        with open(out_dir / "summary.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if plots:
            _plots(runs, rows, out_dir)
    for p, why in incomplete:
        log.warning("not included: %s (%s)", p, why)
    log.info("wrote %s (%d runs, %d incomplete, %d benchmark files)", out_dir / "summary.md", len(runs),
             len(incomplete), len(benches))
    return out_dir / "summary.md"
