"""Figures from stored results only (matplotlib, Agg, PNG + PDF): Figs. 3/4, 7, 8, qualitative grids, Pareto.

- Fig. 7: quality vs training iterations, one line per inference strategy (t_post, plus "skip" when the
  row skips feedback on some steps).
- Fig. 8: quality vs seconds per image for baseline, cache and ILF over step counts.
- Qualitative grid per backbone (`qualitative_<backbone>`): the reference baseline, the cache and ILF on the
  same seeds (the same global image indices from each row's folder: the generation record).
- Figs. 3/4: block x step heatmaps of feature change (from `ilf features`), baseline beside cache.
- Pareto: quality vs block forwards of every row of a group, with the non-dominated front drawn and labelled.
- Training diagnostics per run (`training_<run>`): scales, feedback ratio and loss terms over iterations.
Figs. 8 and Pareto put a fidelity panel (PSNR / LPIPS / SSIM against the row's reference row) beside quality.
Quality is `quality_metric`'s choice (toy: toy class accuracy, then toy KID); points carry their 95% CIs as error bars.
Rows for Figs. 7/8 are those whose `table` names fig7 / fig8, else every row that fits.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

from ilf.io import atomic_path  # noqa: E402
from ilf.report.common import (LOWER_IS_BETTER, METRIC_LABELS, as_float, fidelity_metric, in_table,  # noqa: E402
                               is_missing, is_toy, quality_metric, table_numbers)

METHOD_STYLE = {"baseline": ("tab:gray", "o"), "cache": ("tab:orange", "s"), "ilf": ("tab:blue", "^"),
                "dbcache": ("tab:red", "v"), "fbcache": ("tab:green", "D"), "magcache": ("tab:purple", "P"),
                "taylorseer": ("tab:brown", "X"), "pab": ("tab:pink", "<"), "fastercache": ("tab:olive", ">")}


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf` atomically; close the figure."""
    paths = []
    for fmt in ("png", "pdf"):
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _title(text: str, toy: bool) -> str:
    return f"TOY world: {text}" if toy else text


def _metric_label(metric: str) -> str:
    arrow = " (lower is better)" if metric in LOWER_IS_BETTER else ""
    return METRIC_LABELS.get(metric, metric) + arrow


def pareto_front(costs: Sequence[float], qualities: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates (cost <= and quality at least as good, one strictly),

    sorted by cost; points with a missing cost or quality are ignored.
    """
    pts = [(i, float(c), float(q) if higher_is_better else -float(q)) for i, (c, q) in enumerate(zip(costs, qualities))
           if not (math.isnan(as_float(c)) or math.isnan(as_float(q)))]
    front = []
    for i, c, q in pts:
        dominated = any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for _, c2, q2 in pts)
        if not dominated:
            front.append((c, -q, i))
    return [i for _, _, i in sorted(front)]


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df.columns else pd.Series(np.nan, index=df.index)


FONT = 10  # points; the figures are 6.4 in wide at 150 dpi, so text stays legible when a page shrinks them to ~850 px


def _error_bars(d: pd.DataFrame, metric: str) -> np.ndarray | None:
    """(2, n) distances from the value to its CI bounds (matplotlib's `yerr`), or None when no row has a CI."""
    v, lo, hi = _numeric(d, metric), _numeric(d, f"{metric}_ci_low"), _numeric(d, f"{metric}_ci_high")
    if not (lo.notna() & hi.notna()).any():
        return None
    return np.vstack([(v - lo).clip(lower=0).fillna(0).to_numpy(), (hi - v).clip(lower=0).fillna(0).to_numpy()])


def short_label(row: pd.Series) -> str:
    """A point's label: the row's label (else method), with its step count unless the label says it."""
    label = str(row.get("label") if not is_missing(row.get("label")) else row.get("method"))
    steps = as_float(row.get("steps"))
    return label if math.isnan(steps) or "step" in label else f"{label}, {int(steps)} steps"


def _label_front(ax: plt.Axes, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str]) -> None:
    """Number the front points (1, 2, ... by cost; tied points share one mark, '2,3') next to the points and list
    'number: label' under the axes, so labels never overlap however close the points are."""
    marks: list[tuple[float, float, list[int]]] = []
    for k, (x, y) in enumerate(zip(xs, ys)):
        if marks and (marks[-1][0], marks[-1][1]) == (x, y):
            marks[-1][2].append(k + 1)
        else:
            marks.append((x, y, [k + 1]))
    for j, (x, y, nums) in enumerate(marks):  # left-up, left-down, right-up, right-down, ...
        dx, dy = (-5 if j % 4 < 2 else 5), (6 if j % 2 == 0 else -14)
        ax.annotate(",".join(map(str, nums)), (x, y), fontsize=FONT - 1, fontweight="bold", xytext=(dx, dy),
                    textcoords="offset points", ha="right" if dx < 0 else "left")
    if texts:
        ax.text(0.0, -0.16, "Pareto front: " + "\n".join(f"{k + 1}: {t}" for k, t in enumerate(texts)),
                transform=ax.transAxes, ha="left", va="top", fontsize=FONT - 2)


# Pareto figures by cost axis: name -> (summary column, axis label, unit divisor); file pareto_<name>
PARETO_COSTS: dict[str, tuple[str, str, float]] = {
    "block_forwards": ("block_forwards_measured", "block forwards per image", 1.0),
    "flops": ("flops_per_image", "TFLOPs per image (analytic, ilf.flops)", 1e12),
    "seconds": ("seconds_per_image", "seconds per image", 1.0),
}


def _pareto_panel(ax: plt.Axes, d: pd.DataFrame, m: str, title: str, cost: str = "block_forwards") -> None:
    """One panel of the Pareto figure: metric `m` vs the cost (`PARETO_COSTS`), coloured by method, front drawn
    and listed."""
    col, xlabel, unit = PARETO_COSTS[cost]
    x = _numeric(d, col) / unit if col in d.columns else pd.Series(math.nan, index=d.index)
    d = d.assign(_x=x, _y=_numeric(d, m)).dropna(subset=["_x", "_y"])
    for method, (color, marker) in METHOD_STYLE.items():
        part = d[d["method"] == method]
        if part.empty:
            continue
        ax.errorbar(part["_x"], part["_y"], yerr=_error_bars(part, m), fmt=marker, color=color, ms=6,
                    elinewidth=0.8, capsize=2, alpha=0.85, label=f"{method} ({len(part)} rows)", zorder=3)
    front = pareto_front(list(d["_x"]), list(d["_y"]), m not in LOWER_IS_BETTER)
    fd = d.iloc[front]
    ax.step(fd["_x"], fd["_y"], where="post", color="k", lw=1.2, ls="--", label="Pareto front", zorder=2)
    _label_front(ax, list(fd["_x"]), list(fd["_y"]), [short_label(r) for _, r in fd.iterrows()])
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(_metric_label(m), fontsize=FONT)
    ax.set_title(title, fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.legend(fontsize=FONT - 2, loc="best")
    ax.margins(x=0.12, y=0.15)


def fidelity_rows(d: pd.DataFrame, metric: str, summary: pd.DataFrame) -> tuple[pd.DataFrame, str, int]:
    """The rows of a fidelity panel: those compared with the panel's main reference (the one most rows with a value
    use; references with the same images, i.e. the same `config_hash`, count as one), as fidelity values against
    different references are not comparable. Returns (rows, the reference's name, how many rows were left out)."""
    has = d[_numeric(d, metric).notna()]
    if has.empty or "reference_row" not in has.columns:
        return has, "--", 0
    images = dict(zip(summary["row"], summary["config_hash"])) if "config_hash" in summary.columns else {}
    key = has["reference_row"].map(lambda r: images.get(r) if not is_missing(images.get(r)) else r)
    main = key.value_counts(sort=True).index[0]
    keep = has[key == main]
    return keep, str(keep["reference_row"].value_counts().index[0]), len(has) - len(keep)


def _fidelity_title(name: str, left_out: int) -> str:
    return f"fidelity to {name} (same prompts, seeds)" + (f"\n({left_out} rows against other references not shown)"
                                                          if left_out else "")


def plot_pareto(summary: pd.DataFrame, out_dir: Path, metric: str | None = None, world: str | None = None,
                cost: str = "block_forwards") -> list[Path]:
    """Quality vs cost per group (one panel each, stacked): every row a point coloured by method with its CI as an
    error bar, the non-dominated front as a line; only front points are labelled. Beside each, when the rows have
    one, the same for fidelity to the reference row (`fidelity_metric`: PSNR first).

    Args:
        summary: the row summary (summary.csv).
        out_dir: where `pareto_<cost>.png` / `.pdf` go.
        metric: the quality metric (default: the first available, `quality_metric`).
        world: "toy" or "paper" (default: the summary's).
        cost: the x axis, a `PARETO_COSTS` key: measured block forwards (the paper's unit, Sec. 4.2), analytic
            FLOPs per image (`flops_per_image`, ilf.flops; rows written before FLOPs were recorded have none and
            are left out) or seconds per image (wall time of the generation jobs).

    Returns:
        The written PNG and PDF paths.
    """
    groups = [g for g in summary["group"].dropna().unique()] if "group" in summary.columns else []
    panels = [(g, summary[summary["group"] == g]) for g in groups]
    panels = [(g, d, quality_metric(d, metric), fidelity_metric(d)) for g, d in panels]
    panels = [p for p in panels if p[2] is not None or p[3] is not None]
    toy = is_toy(summary, world)
    n, cols = max(len(panels), 1), 2 if any(p[3] for p in panels) else 1
    fig, axes = plt.subplots(n, cols, figsize=(6.4 * cols, 5.2 * n), squeeze=False)
    for row_axes, (group, d, m, f) in zip(axes, panels):
        if m is not None:
            _pareto_panel(row_axes[0], d, m, f"{group}: numbered points = Pareto front (listed below)", cost)
        else:
            row_axes[0].text(0.5, 0.5, "no rows with a quality metric", ha="center", va="center")
        if cols == 2 and f is not None:
            rows, name, left_out = fidelity_rows(d, f, summary)
            _pareto_panel(row_axes[1], rows, f, f"{group}: " + _fidelity_title(name, left_out), cost)
        elif cols == 2:
            row_axes[1].set_axis_off()
    if not panels:
        axes[0][0].text(0.5, 0.5, "no rows with a quality metric", ha="center", va="center")
    what = "quality and fidelity" if cols == 2 else "quality"
    fig.suptitle(_title(f"{what} vs {PARETO_COSTS[cost][1].split(' (')[0]} (95% CIs)", toy), fontsize=FONT + 1)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / f"pareto_{cost}")


def strategy_name(row: pd.Series) -> str:
    """Fig. 7's inference strategy of an ILF row: its t_post, '+ skip' when feedback is skipped on some steps."""
    t_post = row.get("t_post") if not is_missing(row.get("t_post")) else "rescale"
    steps = row.get("feedback_steps")
    return str(t_post) if is_missing(steps) or str(steps) == "all" else f"{t_post} + skip"


def plot_fig7(summary: pd.DataFrame, out_dir: Path, metric: str | None = None, world: str | None = None) -> list[Path]:
    """Fig. 7: quality vs training iterations, one line per inference strategy."""
    d = in_table(summary, "fig7")
    if d.empty:
        d = summary[(summary["method"] == "ilf") & _numeric(summary, "training_iter").notna()]
    m = quality_metric(d, metric)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if m is not None and not d.empty:
        d = d.assign(_iter=_numeric(d, "training_iter"), _q=_numeric(d, m),
                     _strategy=[strategy_name(r) for _, r in d.iterrows()])
        for name, part in d.sort_values("_iter").groupby("_strategy", sort=True):
            ax.plot(part["_iter"], part["_q"], marker="o", label=name)
        ax.set(xlabel="training iterations", ylabel=_metric_label(m))
        ax.legend(title="inference strategy", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no ILF rows with training iterations", ha="center", va="center")
    ax.set_title(_title("quality vs training iterations (Fig. 7)", is_toy(summary, world)))
    return save_figure(fig, Path(out_dir) / "fig7_training_iterations")


def _fig8_panel(ax: plt.Axes, d: pd.DataFrame, m: str) -> None:
    """Metric `m` vs seconds per image, one line per method, points labelled with their steps, CI error bars."""
    for method, (color, marker) in METHOD_STYLE.items():
        part = d[d["method"] == method]
        part = part.assign(_s=_numeric(part, "seconds_per_image"), _q=_numeric(part, m))
        part = part.dropna(subset=["_s", "_q"]).sort_values("_s")
        if part.empty:
            continue
        ax.errorbar(part["_s"], part["_q"], yerr=_error_bars(part, m), color=color, marker=marker, ms=6,
                    elinewidth=0.8, capsize=3, label=method)
        for _, r in part.iterrows():
            steps = as_float(r["steps"])
            ax.annotate("" if math.isnan(steps) else f"{int(steps)}", (r["_s"], r["_q"]), fontsize=FONT - 1,
                        xytext=(4, 4), textcoords="offset points", color=color)
    ax.set_xlabel("seconds per image", fontsize=FONT)
    ax.set_ylabel(_metric_label(m), fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.legend(fontsize=FONT - 1)
    n = _numeric(d, f"{m}_n").dropna()
    n = n[n > 0]  # the reference row has no fidelity value (n = 0)
    if not n.empty:
        ax.text(0.99, 0.01, f"95% CIs, {int(n.min())}-{int(n.max())} images per point" if n.min() != n.max()
                else f"95% CIs, {int(n.min())} images per point", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=FONT - 2, color="0.3")


def plot_fig8(summary: pd.DataFrame, out_dir: Path, metric: str | None = None, world: str | None = None) -> list[Path]:
    """Fig. 8: quality vs seconds per image for baseline, cache and ILF over step counts, with CI error bars;
    each point is labelled with its step count. Beside it, when the rows have one, fidelity to the reference row."""
    d = in_table(summary, "fig8")
    if d.empty and "group" in summary.columns and summary["group"].notna().any():
        d = summary[summary["group"] == summary["group"].dropna().iloc[0]]
    m, f = quality_metric(d, metric), fidelity_metric(d)
    fig, axes = plt.subplots(1, 2 if f else 1, figsize=(6.4 * (2 if f else 1), 4.4), squeeze=False)
    if m is not None:
        _fig8_panel(axes[0][0], d, m)
        axes[0][0].set_title("quality", fontsize=FONT)
    else:
        axes[0][0].text(0.5, 0.5, "no rows with a quality metric", ha="center", va="center")
    if f is not None:
        rows, name, left_out = fidelity_rows(d, f, summary)
        _fig8_panel(axes[0][-1], rows, f)
        axes[0][-1].set_title(_fidelity_title(name, left_out), fontsize=FONT)
    fig.suptitle(_title("quality vs seconds per image, labels = steps (Fig. 8)", is_toy(summary, world)),
                 fontsize=FONT + 1)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / "fig8_quality_vs_time")


def qualitative_rows(d: pd.DataFrame) -> list[pd.Series]:
    """Reference baseline (most steps), then the first cache and the first ILF row of a backbone.

    Rows of the main tables (1, then 2, then 4) come first, so the grid shows the paper's main settings.
    """
    order = (1, 2, 4)
    tables = d["table"] if "table" in d.columns else pd.Series([None] * len(d), index=d.index)
    prio = d.assign(_p=[min((order.index(t) for t in table_numbers(v) if t in order), default=len(order)) for v in tables])
    prio = prio.sort_values("_p", kind="stable")
    out = []
    base = prio[prio["method"] == "baseline"]
    if not base.empty:
        out.append(base.loc[_numeric(base, "steps").idxmax()])
    for method in ("cache", "ilf"):
        part = prio[prio["method"] == method]
        if not part.empty:
            out.append(part.iloc[0])
    return out


def plot_qualitative(summary: pd.DataFrame, rows_dir: Path, out_dir: Path, n_images: int = 4,
                     world: str | None = None) -> list[Path]:
    """One grid per backbone, `qualitative_<backbone>`: rows = baseline / cache / ILF, columns = the same
    global image indices, hence the same seeds (the generation record)."""
    from PIL import Image

    paths = []
    toy = is_toy(summary, world)
    for backbone in summary["backbone"].dropna().unique() if "backbone" in summary.columns else []:
        chosen = qualitative_rows(summary[summary["backbone"] == backbone])
        if not chosen:
            continue
        fig, axes = plt.subplots(len(chosen), n_images, figsize=(1.8 * n_images, 1.9 * len(chosen)), squeeze=False)
        for r, row in enumerate(chosen):
            for c in range(n_images):
                ax = axes[r][c]
                ax.set_xticks([]), ax.set_yticks([])
                img = Path(rows_dir) / str(row["row"]) / "images" / f"{c:06d}.png"
                if img.exists():
                    with Image.open(img) as im:
                        ax.imshow(np.asarray(im.convert("RGB")))
                else:
                    ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7)
                if c == 0:
                    ax.set_ylabel(f"{row['method']}\n{int(as_float(row['steps']))} steps", fontsize=7)
        fig.suptitle(_title(f"{backbone}: baseline / cache / ILF, same seeds", toy), fontsize=9)
        paths += save_figure(fig, Path(out_dir) / f"qualitative_{backbone}")
    return paths


def plot_feature_change(arrays: dict[str, np.ndarray], meta: dict, out_dir: Path, name: str = "") -> list[Path]:
    """Figs. 3 and 4: block x step heatmaps, baseline beside cache, normalised per figure."""
    toy = str(meta.get("world", "")) == "toy" or str(meta.get("backbone", "")).startswith("toy")
    suffix = f"_{name}" if name else ""
    paths = []
    for fig_no, key, what in ((3, "over_steps", "change from the block's own output at the first step"),
                              (4, "over_blocks", "distance from block 0's output at the same step")):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
        for ax, which in zip(axes, ("baseline", "cache")):
            im = ax.imshow(arrays[f"{which}_{key}_norm"], aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
            ax.set(title=which, xlabel="step", ylabel="block" if which == "baseline" else None)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=list(axes), shrink=0.9, label="normalised distance")
        title = f"Fig. {fig_no}: {what}\n(mean L2 over tokens, normalised by the max over both panels)"
        if meta.get("backbone"):
            title += f" - {meta['backbone']}"
        fig.suptitle(_title(title, toy), fontsize=9, y=1.06)
        paths += save_figure(fig, Path(out_dir) / f"fig{fig_no}_feature_{key}{suffix}")
    return paths


def make_figures(summary: pd.DataFrame, out_dir: Path, rows_dir: Path | None = None,
                 feature_paths: Sequence[Path] = (), metric: str | None = None, n_images: int = 4,
                 world: str | None = None, run_dirs: Sequence[Path] = ()) -> list[Path]:
    """Every figure the stored results allow; returns the written paths."""
    from ilf.harness.features import load_feature_change

    out_dir = Path(out_dir)
    paths = [p for cost in PARETO_COSTS for p in plot_pareto(summary, out_dir, metric, world, cost)]
    paths += plot_fig7(summary, out_dir, metric, world)
    paths += plot_fig8(summary, out_dir, metric, world)
    if rows_dir is not None:
        paths += plot_qualitative(summary, rows_dir, out_dir, n_images, world)
    for fp in feature_paths:
        arrays, meta = load_feature_change(fp)
        name = meta.get("name") or (Path(fp).name if Path(fp).is_dir() else Path(fp).parent.name)
        paths += plot_feature_change(arrays, meta, out_dir, str(name))
    for run in run_dirs:
        paths += plot_training_diagnostics(run, out_dir)
    return paths


def plot_training_diagnostics(run_dir: Path, out_dir: Path, name: str | None = None) -> list[Path]:
    """`training_<run>`: a training run's diagnostics (`train_diagnostics.jsonl`, docs/training.md) over
    iterations: the scales s_i, the feedback ratio |s_i f| / |h_i| per loop block, and the loss terms on the
    probe batch (solid) beside the same terms averaged over the training batches (`train_log.jsonl`, dotted).

    Args:
        run_dir: the training run folder (`ilf train --out`).
        out_dir: where `training_<name>.png` and `.pdf` go.
        name: the run's name in the file name and title; the folder's name by default.

    Returns:
        The written paths (none when the run folder has no diagnostics).
    """
    from ilf.io import read_jsonl
    from ilf.train.diagnostics import DIAGNOSTICS_NAME

    run_dir = Path(run_dir)
    recs = read_jsonl(run_dir / DIAGNOSTICS_NAME)
    if not recs:
        return []
    name = name or run_dir.name
    d = pd.DataFrame(recs).sort_values("iteration")
    its = d["iteration"].to_numpy()
    first = next((r for r in read_jsonl(run_dir / "train_log.jsonl") if r.get("event") == "start"), {})
    loop = (first.get("config") or {}).get("feedback", {})
    b = int(loop.get("loop_start", 0))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, ax, label in (("scales", axes[0], "scale $s_i$"),
                           ("feedback_ratio", axes[1], r"$\|s_i f\| / \|h_i\|$ (probe mean)")):
        values = np.array(d[key].tolist(), dtype=float)
        for j in range(values.shape[1]):
            ax.plot(its, values[:, j], marker="." if len(its) < 40 else None, label=f"block {b + j}")
        ax.set_xlabel("training iterations", fontsize=FONT)
        ax.set_ylabel(label, fontsize=FONT)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.legend(fontsize=FONT - 3, ncol=2, title="loop block", title_fontsize=FONT - 3)
    axes[0].set_title("feedback rescaling", fontsize=FONT)
    axes[1].set_title("feedback size relative to the block input it is added to", fontsize=FONT)
    ax = axes[2]
    log = pd.DataFrame([r for r in read_jsonl(run_dir / "train_log.jsonl") if "loss" in r])
    for key, color in (("loss", "black"), ("loss_recon", "tab:blue"), ("loss_distill", "tab:orange")):
        if key in d.columns:
            ax.plot(its, d[key], color=color, label=f"{key} (probe)")
        if key in log.columns:
            ax.plot(log["iteration"], log[key], color=color, ls=":", lw=0.9, label=f"{key} (train batches)")
    if "output_change" in d.columns:
        ax.plot(its, d["output_change"], color="tab:green", label="mse(ILF, plain) (probe)")
    ax.set_xlabel("training iterations", fontsize=FONT)
    ax.set_ylabel("mean squared error", fontsize=FONT)
    ax.set_title(f"loss terms ({int(d['probe_size'].iloc[-1])}-sample probe)", fontsize=FONT)
    ax.legend(fontsize=FONT - 3)
    for a in axes:
        a.tick_params(labelsize=FONT - 1)
    fig.suptitle(f"training diagnostics: {name}", fontsize=FONT + 1)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / f"training_{name}")
