"""The report of a compile: ``report.json``, a self-contained ``report.html`` and ``frontier.png``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from trtmix.io import atomic_write_bytes, atomic_write_text
from trtmix.search.bisection import pareto

ORIGINAL = "original-fp32"  # the final timing's key of the user's own graph (``trtmix.job.final``)


def mark_pareto(probes: list[dict[str, Any]]) -> None:
    """Set ``pareto`` on every probe: no other probe (of any ordering) is both faster and more accurate."""
    measured = [p for p in probes if p["status"] == "ok"]
    flags = pareto([(p["latency"]["median_ms"], p["relative"]) for p in measured])
    for probe, flag in zip(measured, flags, strict=True):
        probe["pareto"] = flag
    for probe in probes:
        probe.setdefault("pareto", False)


def plot_frontier(report: dict[str, Any], path: Path) -> None:
    """Latency vs relative accuracy of every probe, one colour per ordering; Pareto set, budget and choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for ordering, probes in report["orderings"].items():
        points = sorted((p["latency"]["median_ms"], p["relative"] * 100, p["k"]) for p in probes if p["status"] == "ok")
        if points:
            axes.scatter([x for x, _, _ in points], [y for _, y, _ in points], label=f"{ordering} ordering", alpha=0.8)
    frontier = sorted((p["latency"]["median_ms"], p["relative"] * 100) for p in report["probes"] if p.get("pareto"))
    if frontier:
        axes.step(
            [x for x, _ in frontier], [y for _, y in frontier], where="post", color="grey", lw=1, label="Pareto set"
        )
    axes.axhline(report["budget"]["lower"] * 100, color="red", ls="--", lw=1, label="budget")
    baseline = report["baseline"]["latency"]["median_ms"]
    reference = "all-high plan" if report.get("relative_to") == "high" else "float model"
    axes.scatter([baseline], [100.0], marker="*", s=140, color="black", label=reference)
    chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
    if chosen:
        axes.scatter([chosen["latency"]["median_ms"]], [chosen["relative"] * 100], s=220, facecolors="none",
                     edgecolors="green", lw=2, label="chosen")  # fmt: skip
    axes.set_xlabel(f"median latency, ms ({report['backend']}, {report['flavour']} flavour)")
    axes.set_ylabel(f"{report['metric']} on the search split, % of the {reference}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(report: dict[str, Any], output: Path) -> None:
    """report.json, frontier.png and report.html (the PNG inlined) in ``output``."""
    atomic_write_text(output / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    plot_frontier(report, output / "frontier.png")
    image = base64.b64encode((output / "frontier.png").read_bytes()).decode()
    atomic_write_text(output / "report.html", _html(report, image))


def _html(report: dict[str, Any], image: str) -> str:
    escape = html.escape
    chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
    rows = "".join(
        _probe_row(p, report["chosen"]) for p in sorted(report["probes"], key=lambda p: (p["k"], p["plan_hash"]))
    )
    engine = (report.get("engine_check") or {}).get("units", {})
    units = "".join(
        f"<tr><td><code>{escape(u['name'])}</code></td><td>{escape(u['kind'])}</td><td>{escape(u['precision'])}</td>"
        + _engine_cells(engine.get(u["name"]))
        + _latency_cells(u.get("latency_ms"))
        + f"<td>{escape(str(u.get('module') or ''))}</td>"
        + "".join(f"<td>{u['ranks'].get(name, '')}</td>" for name in report["orderings"])
        + "</tr>"
        for u in report["units"]
    )
    rank_headers = "".join(f"<th>rank ({escape(name)})</th>" for name in report["orderings"])
    summary = _summary_html(report, chosen)
    versions = escape(json.dumps(report["versions"]))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>trtmix report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}tr.chosen{{background:#e6f4e6}}code{{font-size:90%}}
</style></head><body><h1>trtmix report</h1>{summary}
<img alt="accuracy-latency frontier" src="data:image/png;base64,{image}">
<h2>Probes</h2><table><tr><th>orderings</th><th>k (INT8 units)</th><th>status</th>
<th>{escape(report["metric"])}, % of float</th><th>median ms</th><th>predicted ms</th><th>Pareto</th><th>plan</th>
</tr>{rows}</table>
<h2>Chosen plan, unit by unit</h2><table><tr><th>unit</th><th>kind</th><th>precision</th><th>engine runs</th>
<th>engine kernel</th><th>layer ms</th><th>profiled ms high / INT8 (saving)</th><th>torch module</th>
{rank_headers}</tr>{units}</table>{_groups_html(report.get("groups"))}
<p>Versions: <code>{versions}</code></p></body></html>
"""


def _groups_html(section: dict[str, Any] | None) -> str:
    """``--groups``: each group of several units, why it is one, and its profiled saving together vs alone."""
    if not section:
        return ""
    rows = "".join(
        f"<tr><td>{'<br>'.join(f'<code>{html.escape(m)}</code>' for m in g['members'])}</td>"
        f"<td>{html.escape(', '.join(g['reasons']))}</td><td>{_opt_ms(g.get('together_ms'))}</td>"
        f"<td>{_opt_ms(g.get('members_alone_ms'))}</td></tr>"
        for g in section["groups"]
    )
    return (f"<h2>Unit groups</h2><p>{html.escape(section['description'])}. Each group is one bisection step. "
            "Savings are profiled: together from the all-INT8 build, alone from builds with one member of each group "
            "in INT8.</p><table><tr><th>members</th><th>why</th><th>saving together, ms</th>"
            f"<th>members alone, summed, ms</th></tr>{rows}</table>")  # fmt: skip


def _opt_ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _engine_cells(check: dict[str, Any] | None) -> str:
    """What the engine reports for a unit: its precision (flagged when it differs), kernel and layer time."""
    if check is None:
        return "<td>–</td><td></td><td></td>"
    precision = html.escape(check["engine"])
    if check["fused_with"]:
        precision += " (fused with " + html.escape(", ".join(check["fused_with"])) + ": not checkable)"
    elif not check["matches"]:
        precision = f"<b>{precision}: MISMATCH</b>"
    ms = "" if check.get("ms") is None else f"{check['ms']:.3f}"
    return f"<td>{precision}</td><td><code>{html.escape(check.get('primitive') or '')}</code></td><td>{ms}</td>"


def _latency_cells(latency: dict[str, Any] | None) -> str:
    """A unit's profiled time in the all-high and all-INT8 builds and its saving (MAC share when unattributed)."""
    if latency is None:
        return "<td>–</td>"
    if not latency["attributed"]:
        return f"<td>unattributed (MAC share: {latency['saving']:.3f})</td>"
    return f"<td>{latency['high']:.3f} / {latency['int8']:.3f} ({latency['saving']:+.3f})</td>"


def _probe_row(probe: dict[str, Any], chosen: str | None) -> str:
    escape = html.escape
    cells = [
        escape(", ".join(probe["orderings"])),
        str(probe["k"]),
        escape(probe["status"]),
        _pct(probe.get("relative")),
        _ms(probe.get("latency")),
        "–" if probe.get("predicted_ms") is None else f"{probe['predicted_ms']:.2f}",
        "yes" if probe.get("pareto") else "",
        f"<code>{escape(probe['plan_hash'])}</code>",
    ]
    marker = " class=chosen" if probe["plan_hash"] == chosen else ""
    return f"<tr{marker}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _summary_html(report: dict[str, Any], chosen: dict[str, Any] | None) -> str:
    escape = html.escape
    lines = [
        f"Model <code>{escape(report['model'])}</code>, {report['unit_count']} units; "
        f"backend {escape(report['backend'])}, flavour {escape(report['flavour'])}; "
        f"metric {escape(report['metric'])}; budget {escape(report['budget_text'])}.",
        _reference_line(report),
    ]
    if report.get("flavour_note"):
        lines.append(f"Note: {escape(report['flavour_note'])}.")
    if report.get("scored_output"):
        lines.append(f"{escape(report['scored_output']).capitalize()}.")
    check = report.get("engine_check")
    if check:
        lines.append(f"The engine ({escape(report['backend'])}) verified {check['verified_int8']} of "
                     f"{check['planned_int8']} INT8 units as int8; mismatches: "
                     f"{escape(', '.join(check['mismatches'])) or 'none'}.")  # fmt: skip
    if chosen:
        holdout = report["holdout"]
        lines.append(
            f"Chosen: {chosen['k']} INT8 units; {_pct(chosen['relative'])} of float "
            f"on the search split, {_pct(holdout.get('relative'))} on the holdout split (never seen by the search)."
        )
    elif report["chosen"] == ORIGINAL:
        lines.append(f"Chosen: the FP32 graph as given (<code>{escape(str(report.get('original_model')))}</code>), "
                     f"shipped unchanged: {escape((report.get('final_timing') or {}).get('reason', ''))}.")  # fmt: skip
    else:
        lines.append(f"<b>No probe met the budget</b>: {escape(report['stop_reason'])}.")
    base = report["baseline"]
    if base["fp32"]["accuracy"]:
        lines.append(f"The all-high plan keeps {_pct(base['all_high']['accuracy'] / base['fp32']['accuracy'])} of the "
                     "FP32 model's metric on the search split.")  # fmt: skip
    if report["violations"]:
        lines.append(f"Accuracy was not monotone in k: {escape(str(report['violations']))}.")
    files = report.get("files") or {}
    if files.get("trtexec"):
        lines.append(f"On a TensorRT host: <code>{escape(files['trtexec'])}</code> (also in trtexec.txt).")
    if files.get("tensorrt_note"):
        lines.append(f"{escape(files['tensorrt_note'])}.")
    return "".join(f"<p>{line}</p>" for line in lines)


def latency_figures(report: dict[str, Any]) -> tuple[dict[str, float], str]:
    """The chosen plan's and the reference plans' median latency in ms, all from one source, and that source.

    The final interleaved re-timing when it ran (every figure and ratio in the summary from the same rounds; the
    reference plans it did not time are left out), else the probes' own medians, each timed once during the search.
    """
    final = report.get("final_timing") or {}
    medians = final.get("medians_ms") or {}
    keys = {"chosen": report["chosen"], "FP32": ORIGINAL, "all-high": _probe_key(report, 0),
            "all-INT8": _probe_key(report, report["unit_count"])}  # fmt: skip
    if report["chosen"] == ORIGINAL:  # the chosen graph is the FP32 one: named once
        del keys["FP32"]
    if final.get("rounds") and report["chosen"] in medians:
        figures = {name: medians[key] for name, key in keys.items() if key in medians}
        return figures, (f"medians of {final['rounds']} interleaved rounds of {final.get('round_runs', '?')} runs, "
                         "timed together at the end")  # fmt: skip
    base = report["baseline"]
    entries = {"FP32": base.get("fp32"), "all-high": base.get("all_high"), "all-INT8": report.get("all_int8")}
    figures = {name: entry["latency"]["median_ms"] for name, entry in entries.items() if entry}
    reference = "all-high" if base.get("relative_to") == "high" else "FP32"
    figures[reference] = base["latency"]["median_ms"]  # the figure budgets and ratios were relative to
    chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
    shipped = chosen["latency"]["median_ms"] if chosen else figures.pop("FP32")  # no probe: the original graph
    return {"chosen": shipped, **figures}, "probe medians, each timed once during the search"


def _probe_key(report: dict[str, Any], k: int) -> str | None:
    """The plan hash of the probe with ``k`` INT8 units (0: the all-high plan), if one was measured."""
    return next((p["plan_hash"] for p in report["probes"] if p["k"] == k and p["status"] == "ok"), None)


def figures_text(figures: dict[str, float]) -> str:
    """``chosen 4.10 ms, FP32 5.00 ms, ...``: the chosen plan first, then the references."""
    return ", ".join(f"{name} {ms:.2f} ms" if ms >= 1 else f"{name} {ms:.4f} ms" for name, ms in figures.items())


def _reference_line(report: dict[str, Any]) -> str:
    """The chosen and reference plans' latencies (one source), and what budgets are relative to."""
    relative = "the all-high plan" if report.get("relative_to") == "high" else "the FP32 model"
    if report.get("chosen"):
        figures, source = latency_figures(report)
        latency = f"{figures_text(figures)} ({source}; the probe table has each probe's own median)"
    else:
        latency = "no plan was chosen; the probe table has each probe's median"
    return (f"Latency: {html.escape(latency)}. Accuracy percentages are relative to {relative}. "
            f"{report.get('cpu', '')}.")  # fmt: skip


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.3f}%"


def _ms(latency: dict[str, Any] | None) -> str:
    return "–" if not latency else f"{latency['median_ms']:.2f}"
