"""Write report.json / report.md / PNG plots, print summary tables, compare two reports, check gates."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from rag.corpus.parse import normalise_title
from rag.errors import ConfigError
from rag.eval.dataset import TYPES
from rag.eval.metrics import (
    ABSTENTION_METRICS,
    ANSWER_METRICS,
    GROUNDING_METRICS,
    LATENCY_METRICS,
    LOWER_IS_BETTER,
    METRICS,
    REFERENCE_METRICS,
    RETRIEVAL_METRICS,
    TOKEN_METRICS,
)

PLOTS = ("metrics_by_mode.png", "metrics_by_type.png", "latency.png", "abstention_tradeoff.png")
TYPE_METRICS = RETRIEVAL_METRICS + ("key_fact_recall", "citation_recall", "abstention_accuracy", "false_abstention_rate")


def fmt(value, metric: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if metric.startswith("latency") or metric.endswith("tokens_mean"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def shown_metrics(report: dict) -> list[str]:
    """Stable metric keys, minus answer metrics when no answers were produced and reference metrics when no
    question has a reference answer."""
    answered = report.get("config", {}).get("answer", "none") != "none"
    referenced = any(r.get("reference") for r in report.get("questions", []))
    return [m for m in METRICS if (answered or m not in ANSWER_METRICS) and (referenced or m not in REFERENCE_METRICS)]


def summary_table(report: dict, markdown: bool = False) -> str:
    modes = list(report["summary"])
    rows = [[m] + [fmt(report["summary"][mode].get(m), m) for mode in modes] for m in shown_metrics(report)]
    rows.append(["questions (errors)"] + [f"{report['summary'][mode]['questions']} ({report['summary'][mode]['errors']})" for mode in modes])
    return _table(["metric", *modes], rows, markdown)


def split_table(report: dict, mode: str, markdown: bool = False) -> str:
    """One mode's summary per split (tune = where constants were fitted, test = out of sample)."""
    per = report.get("by_split", {}).get(mode, {})
    splits = [s for s in ("tune", "test") if s in per]
    if not splits:
        return ""
    rows = [[m] + [fmt(per[s].get(m), m) for s in splits] for m in shown_metrics(report)]
    rows.append(["questions"] + [str(per[s]["questions"]) for s in splits])
    return _table([f"{mode}", *splits], rows, markdown)


def tradeoff_text(report: dict) -> list[str]:
    """Where the configured abstention point sits, per mode and split."""
    out = []
    for mode, per in (report.get("abstention_tradeoff") or {}).items():
        for split, t in per.items():
            c = t["configured"]
            out.append(f"{mode} {split}: abstained on {c['caught']}/{c['unanswerable']} unanswerable, refused "
                       f"{c['false_refusals']}/{c['answerable']} answerable; {c['low_confidence']} answered with low confidence")
    return out


def stage_table(report: dict, markdown: bool = False) -> str:
    """Per mode and LLM stage: calls, tokens and time per question (mean) and in total."""
    rows = []
    for mode, summary in report["summary"].items():
        for name, st in (summary.get("stages") or {}).items():
            rows.append([mode, name, f"{st['calls_mean']:.2f} / {st['calls_total']}",
                         f"{st['prompt_tokens_mean']:.0f} / {st['prompt_tokens_total']}",
                         f"{st['completion_tokens_mean']:.0f} / {st['completion_tokens_total']}",
                         f"{st['ms_mean']:.0f} / {st['ms_total']:.0f}"])
    if not rows:
        return ""
    return _table(["mode", "stage", "calls mean / total", "prompt tokens", "completion tokens", "ms"], rows, markdown)


def by_type_table(report: dict, metric: str, markdown: bool = False) -> str:
    modes = list(report["by_type"])
    types = [t for t in TYPES if any(t in report["by_type"][m] for m in modes)]
    rows = []
    for t in types:
        n = next((report["by_type"][m][t]["questions"] for m in modes if t in report["by_type"][m]), 0)
        rows.append([f"{t} ({n})"] + [fmt(report["by_type"][m].get(t, {}).get(metric), metric) for m in modes])
    return _table([f"{metric} by type", *modes], rows, markdown)


def _type_metrics(report: dict) -> list[str]:
    """By-type metrics that have a value somewhere in this report."""
    out = []
    for metric in TYPE_METRICS:
        if any(v.get(metric) is not None for per_type in report["by_type"].values() for v in per_type.values()):
            out.append(metric)
    return out


# ---------------------------------------------------------------- files


CSV_COLUMNS = ("id", "mode", "type", "question", "answer", "cited_titles", "level", "abstained", "latency_ms", "error")


def write_csv(report: dict, path: Path) -> Path:
    """report.csv: one row per question and mode (question, answer, cited titles, level, each metric), for a
    spreadsheet. Lists are joined with "; "; a metric that does not apply is an empty cell."""
    rows = report["questions"]
    present = {k for r in rows for k in r["metrics"]}
    metrics = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    judged = [k for k in ("faithfulness", "answer_relevance", "judge_citation_recall", "judge_citation_precision",
                          "judge_answer_correctness") if any(k in (r.get("judge") or {}) for r in rows)]
    # utf-8-sig: spreadsheet programs then read the titles' accents and dashes right
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([*CSV_COLUMNS, *metrics, *judged])
        for r in rows:
            cells = [r.get(c) for c in CSV_COLUMNS]
            cells[CSV_COLUMNS.index("cited_titles")] = "; ".join(r.get("cited_titles") or [])
            cells += [r["metrics"].get(m) for m in metrics] + [(r.get("judge") or {}).get(k) for k in judged]
            out.writerow(["" if c is None else c for c in cells])
    return path


def write_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "report.csv"]
        paths[0].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        write_csv(report, paths[2])
        plots = write_plots(report, out_dir)
        paths[1].write_text(markdown_report(report, plots), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {out_dir}: {exc.strerror or exc}: choose another --out DIR") from None
    return paths + plots


def markdown_report(report: dict, plots: list[Path] | None = None) -> str:
    ds, cfg = report["dataset"], report["config"]
    lines = [
        f"# Evaluation report: {Path(ds['path']).name}",
        "",
        f"- dataset: `{ds['path']}` ({ds['questions']} questions: "
        + ", ".join(f"{t} {n}" for t, n in ds["types"].items()) + f"; sha256 {ds['sha256'][:12]})",
        f"- modes: {', '.join(cfg['modes'])}; answers: {cfg['answer']}; retrieval depth top-k {cfg['top_k']}"
        + (f"; answerer top-k {cfg['answer_top_k']}" if cfg["answer"] != "none" else ""),
        f"- index: {cfg.get('papers')} papers in `{cfg.get('data_dir')}`; embedding model "
        f"{(cfg.get('index_params') or {}).get('embedding_model')} ({cfg.get('embed_backend')})",
        f"- created {cfg.get('created')} at commit {cfg.get('git_commit')}, {cfg.get('seconds')} s",
        "",
        "Retrieval metrics are paper-level (binary relevance by normalised title) over answerable questions; "
        "abstention accuracy is over unanswerable questions, false abstention rate over answerable ones. "
        "Grounding metrics leave out abstained answers. Latency is per question "
        + ("(retrieval only)." if cfg["answer"] == "none" else "(end-to-end answer time)."),
        "",
        "## Summary",
        "",
        summary_table(report, markdown=True),
        "",
    ]
    for mode in cfg["modes"]:
        table = split_table(report, mode, markdown=True)
        if table:
            lines += [f"## {mode}: tune vs test", "", "Constants are fitted on tune; test is out of sample.", "", table, ""]
    if report.get("abstention_tradeoff"):
        lines += ["## Abstention operating point", ""] + [f"- {t}" for t in tradeoff_text(report)] + [""]
    lines += ["## By question type", ""]
    for metric in _type_metrics(report):
        lines += [by_type_table(report, metric, markdown=True), ""]
    if report.get("judge"):
        lines += ["## LLM judge (separate from the offline metrics)", ""]
        modes = list(report["judge"])
        keys = ["judge_citation_recall", "judge_citation_precision", "faithfulness", "answer_relevance",
                "judge_answer_correctness", "judged", "failed"]
        lines += [_table(["judge", *modes], [[k] + [fmt(report["judge"][m].get(k), k) for m in modes] for k in keys], True), ""]
    if any(report["summary"][m].get("stages") for m in cfg["modes"]):
        lines += ["## LLM cost per stage", "", stage_table(report, markdown=True), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += _misses(report)
    if ds.get("issues"):
        lines += ["## Dataset issues", ""] + [f"- line {i['line']}" + (f" ({i['id']})" if i.get("id") else "") + f": {i['message']}" for i in ds["issues"]] + [""]
    errors = [r for r in report["questions"] if r.get("error")]
    if errors:
        lines += ["## Errors", ""] + [f"- {r['id']} ({r['mode']}): {r['error']}" for r in errors] + [""]
    return "\n".join(lines)


def _misses(report: dict, limit: int = 15) -> list[str]:
    mode = report["config"]["modes"][0]
    rows = [r for r in report["questions"] if r["mode"] == mode and r["metrics"].get("recall@10") is not None]
    rows.sort(key=lambda r: (r["metrics"]["recall@10"], r["metrics"].get("mrr") or 0))
    rows = [r for r in rows if r["metrics"]["recall@10"] < 1.0][:limit]
    if not rows:
        return []
    out = [f"## Weakest retrieval ({mode}, lowest recall@10)", ""]
    for r in rows:
        m = r["metrics"]
        gold = r.get("gold_titles", [])
        got = {normalise_title(t) for t in r["retrieved_titles"]}
        missed = [g for g in gold if normalise_title(g) not in got]
        out.append(f"- **{r['id']}** ({r['type']}) recall@10 {m['recall@10']:.2f}, mrr {m['mrr']:.2f}: {r['question']}")
        if missed and len(gold) <= 3:
            out.append("  - missed: " + "; ".join(missed))
        elif missed:
            out.append(f"  - missed {len(missed)} of {len(gold)} gold papers")
    return out + [""]


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = list(report["summary"])
    paths = []

    # 1. metrics by mode (grouped bars; 0..1 metrics only)
    metrics = [m for m in RETRIEVAL_METRICS + GROUNDING_METRICS + ABSTENTION_METRICS + REFERENCE_METRICS
               if any(report["summary"][mode].get(m) is not None for mode in modes)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(metrics) + 2), 4))
    width = 0.8 / max(1, len(modes))
    x = np.arange(len(metrics))
    for i, mode in enumerate(modes):
        vals = [report["summary"][mode].get(m) for m in metrics]
        bars = ax.bar(x + i * width - 0.4 + width / 2, [v if v is not None else 0 for v in vals], width, label=mode)
        for b, v in zip(bars, vals):
            if v is not None:
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, metrics, rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_title("Metrics by retrieval mode")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / PLOTS[0])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 2. by question type: one panel per metric
    tmetrics = _type_metrics(report) or ["recall@10"]
    types = [t for t in TYPES if any(t in report["by_type"][m] for m in modes)]
    ncols = min(4, len(tmetrics))
    nrows = math.ceil(len(tmetrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.5, 3.4 * nrows + 0.4), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(tmetrics):]:
        ax.axis("off")
    for ax, metric in zip(flat, tmetrics):
        ts = [t for t in types if any(report["by_type"][m].get(t, {}).get(metric) is not None for m in modes)]
        x = np.arange(len(ts))
        for i, mode in enumerate(modes):
            vals = [report["by_type"][mode].get(t, {}).get(metric) for t in ts]
            ax.bar(x + i * width - 0.4 + width / 2, [v if v is not None else 0 for v in vals], width, label=mode)
        ax.set_xticks(x, ts, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Metrics by question type")
    fig.tight_layout()
    paths.append(out_dir / PLOTS[1])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 3. latency distribution per mode
    fig, ax = plt.subplots(figsize=(6, 3.8))
    data = [[r["latency_ms"] for r in report["questions"] if r["mode"] == m and r.get("latency_ms") is not None and not r.get("error")] for m in modes]
    if any(data):
        ax.boxplot([d or [0] for d in data], showfliers=True)
        ax.set_xticks(range(1, len(modes) + 1), modes)
        for i, mode in enumerate(modes, start=1):
            s = report["summary"][mode]
            if s.get("latency_ms_p50") is not None:
                ax.annotate(f"p50 {s['latency_ms_p50']:.0f}\np95 {s['latency_ms_p95']:.0f}", (i + 0.18, s["latency_ms_p50"]), fontsize=7)
        if max(max(d) for d in data if d) / max(1e-9, min(min(d) for d in data if d)) > 50:
            ax.set_yscale("log")
    ax.set_ylabel("ms per question")
    ax.set_title("Latency (" + ("retrieval" if report["config"]["answer"] == "none" else "end-to-end answer") + ")")
    fig.tight_layout()
    paths.append(out_dir / PLOTS[2])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 4. abstention trade-off: caught vs falsely refused across thresholds, with the configured point
    tradeoff = report.get("abstention_tradeoff") or {}
    if tradeoff:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for mode, per in tradeoff.items():
            for split, t in per.items():
                pts = t["points"]
                xs = [p["false_refusals"] / max(1, p["answerable"]) for p in pts]
                ys = [p["caught"] / max(1, p["unanswerable"]) for p in pts]
                line, = ax.plot(xs, ys, drawstyle="steps-post", label=f"{mode} {split}")
                c = t["configured"]
                ax.plot(c["false_refusals"] / max(1, c["answerable"]), c["caught"] / max(1, c["unanswerable"]), "o",
                        color=line.get_color())
        ax.axvline(0.04, color="grey", ls=":", lw=1)
        ax.axhline(0.75, color="grey", ls=":", lw=1)
        ax.set(xlabel="answerable questions refused", ylabel="unanswerable questions caught",
               title="Abstention trade-off (dots: configured point)", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / PLOTS[3])
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ---------------------------------------------------------------- gates

_GATE = re.compile(r"^(?:(?P<mode>[a-z0-9_]+):)?(?P<metric>[a-z0-9_@]+)=(?P<value>[-+0-9.eE]+)$")


def parse_gates(specs: list[str], modes: list[str], answer: str, kind: str = "under") -> list[dict]:
    """'METRIC=VALUE' (every evaluated mode) or 'MODE:METRIC=VALUE' -> gate dicts; bad specs are ConfigErrors."""
    gates = []
    for spec in specs or []:
        m = _GATE.match(spec.strip())
        if not m:
            raise ConfigError(f"--fail-{kind} {spec!r}: expected METRIC=VALUE or MODE:METRIC=VALUE, e.g. recall@10=0.6")
        metric, mode = m["metric"], m["mode"]
        if metric not in METRICS:
            raise ConfigError(f"--fail-{kind} {spec!r}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        if mode and mode not in modes:
            raise ConfigError(f"--fail-{kind} {spec!r}: mode {mode!r} is not evaluated (--modes {','.join(modes)})")
        if answer == "none" and metric in ANSWER_METRICS:
            raise ConfigError(f"--fail-{kind} {spec!r}: {metric} needs answers; drop --answer none")
        try:
            value = float(m["value"])
        except ValueError:
            raise ConfigError(f"--fail-{kind} {spec!r}: {m['value']!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"--fail-{kind} {spec!r}: the threshold must be a finite number")
        for md in [mode] if mode else modes:
            gates.append({"mode": md, "metric": metric, "kind": kind, "threshold": value})
    return gates


def check_gates(report: dict, gates: list[dict]) -> list[dict]:
    """Fill in each gate's value and pass/fail; a metric that was not computed fails."""
    out = []
    for g in gates:
        value = report["summary"].get(g["mode"], {}).get(g["metric"])
        if value is None:
            ok = False
        elif g["kind"] == "under":
            ok = value >= g["threshold"]
        else:
            ok = value <= g["threshold"]
        out.append(g | {"value": value, "passed": ok})
    return out


def gate_message(g: dict) -> str:
    if g["value"] is None:
        return f"{g['mode']} {g['metric']} was not computed (no applicable questions); gate {g['threshold']:g} fails"
    if g["kind"] == "under":
        return f"{g['mode']} {g['metric']} = {g['value']:.4f} is below the floor {g['threshold']:g}"
    return f"{g['mode']} {g['metric']} = {g['value']:.4f} is above the ceiling {g['threshold']:g}"


# ---------------------------------------------------------------- compare


def load_report(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read report {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"report {path} is not valid JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("summary"), dict):
        raise ConfigError(f"{path} is not a `rag eval` report.json (no 'summary')")
    report["_path"] = str(path)
    return report


def compare(a: dict, b: dict) -> dict:
    """Per mode and metric: A, B, delta, and whether B is better/worse; plus by-type retrieval deltas."""
    modes = [m for m in a["summary"] if m in b["summary"]]
    out = {"a": a.get("_path"), "b": b.get("_path"), "modes": modes, "summary": {}, "by_type": {}, "warnings": []}
    only = sorted(set(a["summary"]) ^ set(b["summary"]))
    if only:
        out["warnings"].append(f"modes in only one report (skipped): {', '.join(only)}")
    sha_a, sha_b = a.get("dataset", {}).get("sha256"), b.get("dataset", {}).get("sha256")
    if sha_a and sha_b and sha_a != sha_b:
        out["warnings"].append("the reports were run on different datasets: deltas mix question sets")
    for key in ("answer", "top_k", "answer_top_k", "index_params", "corpus_fingerprint", "candidates", "rrf_k", "abstain_threshold"):
        va, vb = a.get("config", {}).get(key), b.get("config", {}).get(key)
        if va != vb:
            out["warnings"].append(f"config {key} differs: {va!r} -> {vb!r}")
    for mode in modes:
        rows = {}
        for metric in METRICS:
            va, vb = a["summary"][mode].get(metric), b["summary"][mode].get(metric)
            if va is None and vb is None:
                continue
            rows[metric] = _delta(metric, va, vb)
        out["summary"][mode] = rows
        types = [t for t in TYPES if t in a.get("by_type", {}).get(mode, {}) and t in b.get("by_type", {}).get(mode, {})]
        out["by_type"][mode] = {
            t: {m: _delta(m, a["by_type"][mode][t].get(m), b["by_type"][mode][t].get(m)) for m in ("recall@10", "ndcg@10", "mrr")}
            for t in types
            if a["by_type"][mode][t].get("recall@10") is not None
        }
    return out


def _delta(metric: str, va, vb) -> dict:
    delta = None if va is None or vb is None else round(vb - va, 6)
    verdict = None
    if delta is not None:
        scale = max(abs(va), abs(vb), 1e-9) if metric in LATENCY_METRICS + TOKEN_METRICS else 1.0
        if abs(delta) / scale > 1e-3:
            better = (delta < 0) if metric in LOWER_IS_BETTER else (delta > 0)
            verdict = "better" if better else "worse"
    return {"a": va, "b": vb, "delta": delta, "verdict": verdict}


def compare_text(cmp: dict) -> str:
    lines = [f"A: {cmp['a']}", f"B: {cmp['b']}"]
    lines += [f"warning: {w}" for w in cmp["warnings"]]
    for mode in cmp["modes"]:
        rows = []
        for metric, d in cmp["summary"][mode].items():
            sign = "" if d["delta"] is None else ("+" if d["delta"] > 0 else "")
            delta = "–" if d["delta"] is None else sign + fmt(d["delta"], metric)
            rows.append([metric, fmt(d["a"], metric), fmt(d["b"], metric), delta, d["verdict"] or ""])
        lines += ["", f"[{mode}]", _table(["metric", "A", "B", "delta", ""], rows)]
        if cmp["by_type"].get(mode):
            rows = []
            for t, ms in cmp["by_type"][mode].items():
                d = ms["recall@10"]
                sign = "" if d["delta"] is None else ("+" if d["delta"] > 0 else "")
                rows.append([t, fmt(d["a"]), fmt(d["b"]), "–" if d["delta"] is None else sign + fmt(d["delta"]),
                             fmt(ms["ndcg@10"]["delta"]), fmt(ms["mrr"]["delta"])])
            lines += ["", _table([f"{mode} recall@10 by type", "A", "B", "delta", "Δndcg@10", "Δmrr"], rows)]
    return "\n".join(lines)
