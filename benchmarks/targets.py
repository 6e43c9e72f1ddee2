"""Issue 15's targets read off the suite's JSON files: which rows meet them, which not.

``python -m benchmarks.targets AFTER.json [AFTER2.json ...] [--before BEFORE.json ...]
[--held-out HELD.json] [--conditions CONDITIONS.json] [--out SUMMARY.md]``

For every layer row of ``AFTER`` (a ``run.py`` result): occupancy, ours and
spconv for map + forward and forward + backward, the time ratios ours / spconv
against the targets (<= 0.7 for map + fwd and fwd + bwd on submanifold and
generative layers, <= 1.0 for the forward of strided layers), the products'
fraction of the row's sgemm rate (target >= 50 % from C = 32), and, when
``--before`` is given, the same ratios measured for the code before the
change (rows matched by workload, layer and C). Held-out rows (``--held-out``)
get their own table; ``--conditions`` (a ``conditions.py`` result) adds the
slowdowns under load and the training loop's p90 / median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

TARGET_RATIO = 0.7          # ours / spconv, map + fwd and fwd + bwd
STRIDED_RATIO = 1.0         # ours / spconv, forward of stride-2 layers
SGEMM_FRACTION = 0.5        # products at C >= 32
TRAIN_P90 = 1.5             # p90 / median step time, quiet machine


def _threads_text(counts):
    """The torch thread counts spconv ran at, as the run recorded them."""
    if isinstance(counts, list):
        return " and ".join(map(str, counts)) + " thread(s), the faster per operation"
    return f"{counts} thread(s)"


def _ratio(entry, op):
    """ours / spconv: the median of the run-by-run ratios when recorded (the two runs of
    a pair see the same phase of a shared machine), else the ratio of the medians."""
    paired = entry.get("paired_ours_over_spconv", {}).get(op)
    if paired is not None:
        return paired
    ours, peer = entry.get("ours", {}).get(op), entry.get("spconv", {}).get(op)
    if isinstance(ours, dict) and isinstance(peer, dict) and ours.get("times_s") and \
            peer.get("times_s"):   # runs of run.py are interleaved: pair them
        return statistics.median(a / b for a, b in zip(ours["times_s"], peer["times_s"]))
    if not ours or not peer or not isinstance(ours, dict) or "median_s" not in peer:
        return None
    return ours["median_s"] / peer["median_s"]


def _ms(entry, lib, op):
    got = entry.get(lib, {}).get(op)
    return f"{got['median_s'] * 1e3:.1f}" if isinstance(got, dict) and "median_s" in got else ""


def _mark(value, limit):
    if value is None:
        return ""
    return f"{value:.2f}" + (" ✓" if value <= limit else " ✗")


def _skinny(entry):
    """The row's GEMM-shape ceiling: its rate, the square sgemm rate, our forward's fraction."""
    rate = entry.get("skinny_gemm_gflops")
    if not rate:
        return ""
    fraction = entry.get("ours", {}).get("skinny_gemm_fraction", {}).get("fwd")
    return (f"{rate:.0f}, {entry.get('sgemm_gflops', 0):.0f}, "
            + ("" if fraction is None else f"{100 * fraction:.0f}%"))


def _disagreement(entry):
    """A note when spconv's outputs differ from ours beyond the run's tolerance (the row
    is then no comparison of the same work and counts for no target), naming the side
    the brute-force forward (``run.oracle_forward_error``) found right; else ""."""
    spconv = entry.get("agreement", {}).get("spconv")
    if not isinstance(spconv, dict) or spconv.get("agree", True):
        return ""
    oracle = entry["agreement"].get("oracle")
    if oracle is None:
        return "outputs differ from spconv's: not counted"
    if oracle.get("agree"):
        return (f"spconv's output wrong (ours = brute force to {oracle['fwd']:.0e}, spconv "
                f"off by {spconv.get('fwd', float('nan')):.2f}): not counted")
    return "ours differs from the brute-force forward: not counted"


def _key(entry):
    return entry["workload"], entry["layer"], str(entry["channels"])


def layer_table(results, before=None):
    before_by_key = {_key(e): e for e in (before or [])}
    head = ("| workload | group | layer | C | occupancy | map+fwd ms ours / spconv | fwd ms "
            "ours / spconv | fwd+bwd ms ours / spconv | ours/spconv map+fwd | ours/spconv fwd "
            "| ours/spconv fwd+bwd | sgemm fraction ours fwd, fwd+bwd "
            "| skinny-GEMM rate GFLOP/s, sgemm rate, ours fwd / it |"
            + (" before: ours/spconv map+fwd, fwd, fwd+bwd |" if before else ""))
    lines = [head, "|" + "---|" * (13 + (1 if before else 0))]
    tallies = {}   # per group (suite, sweep, held-out): {target: [met, counted]}
    for e in results:
        if e["layer"] == "unet":
            continue
        tally = tallies.setdefault(e.get("group", "suite"), {
            "mapfwd": [0, 0], "fwdbwd": [0, 0], "strided_fwd": [0, 0], "sgemm": [0, 0]})
        strided = e["layer"] in ("down2", "up2")
        mapfwd, fwd, fwdbwd = _ratio(e, "mapfwd"), _ratio(e, "fwd"), _ratio(e, "fwdbwd")
        note = _disagreement(e)
        if note:   # not the same result: shown, not counted
            mapfwd = fwd = fwdbwd = None
        fractions = e.get("ours", {}).get("sgemm_fraction", {})
        if strided:
            if fwd is not None:
                tally["strided_fwd"][0] += fwd <= STRIDED_RATIO
                tally["strided_fwd"][1] += 1
            cells = ("", _mark(fwd, STRIDED_RATIO), f"{fwdbwd:.2f}" if fwdbwd else "")
            first = f"{mapfwd:.2f}" if mapfwd else ""
        else:
            for name, value in (("mapfwd", mapfwd), ("fwdbwd", fwdbwd)):
                if value is not None:
                    tally[name][0] += value <= TARGET_RATIO
                    tally[name][1] += 1
            first = _mark(mapfwd, TARGET_RATIO)
            cells = (None, f"{fwd:.2f}" if fwd else "", _mark(fwdbwd, TARGET_RATIO))
        if int(e["channels"]) >= 32 and fractions:
            tally["sgemm"][0] += min(fractions.values()) >= SGEMM_FRACTION
            tally["sgemm"][1] += 1
        if note:
            first, cells = note, ("", "", "")
        row = (f"| {e['workload']} | {e.get('group', 'suite')} | {e['layer']} | {e['channels']} "
               f"| {100 * e['occupancy']:.0f}% "
               f"| {_ms(e, 'ours', 'mapfwd')} / {_ms(e, 'spconv', 'mapfwd')} "
               f"| {_ms(e, 'ours', 'fwd')} / {_ms(e, 'spconv', 'fwd')} "
               f"| {_ms(e, 'ours', 'fwdbwd')} / {_ms(e, 'spconv', 'fwdbwd')} "
               f"| {first} | {cells[1]} | {cells[2]} "
               f"| {100 * fractions.get('fwd', 0):.0f}%, {100 * fractions.get('fwdbwd', 0):.0f}% "
               f"| {_skinny(e)} |")
        if before:
            old = before_by_key.get(_key(e))
            if old:
                row += " " + ", ".join(
                    f"{v:.2f}" if v else "-" for v in (_ratio(old, "mapfwd"), _ratio(old, "fwd"),
                                                        _ratio(old, "fwdbwd"))) + " |"
            else:
                row += " |"
        lines.append(row)
    return lines, tallies


def _total(tallies) -> dict:
    """The tallies of all groups added up."""
    total = {"mapfwd": [0, 0], "fwdbwd": [0, 0], "strided_fwd": [0, 0], "sgemm": [0, 0]}
    for tally in tallies.values():
        for name, (met, counted) in tally.items():
            total[name][0] += met
            total[name][1] += counted
    return total


def unet_table(results):
    lines = ["| network on | fwd ms ours / spconv | fwd+bwd ms ours / spconv | ours/spconv fwd "
             "| ours/spconv fwd+bwd |", "|---|---|---|---|---|"]
    for e in results:
        if e["layer"] != "unet":
            continue
        fwd, fwdbwd = _ratio(e, "fwd"), _ratio(e, "fwdbwd")
        lines.append(f"| {e['workload']} | {_ms(e, 'ours', 'fwd')} / {_ms(e, 'spconv', 'fwd')} "
                     f"| {_ms(e, 'ours', 'fwdbwd')} / {_ms(e, 'spconv', 'fwdbwd')} "
                     f"| {'' if fwd is None else f'{fwd:.2f}'} | {_mark(fwdbwd, TARGET_RATIO)} |")
    return lines if len(lines) > 2 else []


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def conditions_tables(report):
    lines = []
    if report.get("load"):
        lines += ["Slowdowns (time under load / quiet time) of ours at its default thread "
                  "count and at one thread (`ours 1t`), and of spconv at its agreeing "
                  "setting; ✓: ours no worse than spconv (the target), `1t ✓`: ours at one "
                  "thread no worse than spconv (like for like when spconv runs on one torch "
                  "thread); `ours / spconv`: time under load, ours at its default against "
                  "spconv's.", "",
                  "| workload | busy | op | ours | ours 1t | spconv | target | 1t | "
                  "ours / spconv |", "|---|---|---|---|---|---|---|---|---|"]
        met = {"target": [0, 0], "1t": [0, 0], "faster": [0, 0]}
        for e in report["load"]:
            for procs, got in e["by_load"].items():
                if str(procs) == "0":
                    continue
                slow = got["slowdown"]
                for op in ("mapfwd", "fwdbwd"):
                    if f"spconv.{op}" not in slow:
                        continue
                    peer = slow[f"spconv.{op}"]
                    ours, ours_t1 = slow.get(f"ours.{op}"), slow.get(f"ours_t1.{op}")
                    ratio = statistics.median(got[f"ours.{op}"]) / \
                        statistics.median(got[f"spconv.{op}"])
                    checks = {"target": ours is not None and ours <= peer,
                              "1t": ours_t1 is not None and ours_t1 <= peer,
                              "faster": ratio <= 1.0}
                    for key, ok in checks.items():
                        met[key][0] += ok
                        met[key][1] += 1
                    lines.append(
                        f"| {e['workload']} {e['layer']} C{e['channels']} | {procs} | {op} | "
                        f"{_fmt(ours)} | {_fmt(ours_t1)} | {peer:.2f} | "
                        f"{'✓' if checks['target'] else '✗'} | {'✓' if checks['1t'] else '✗'} "
                        f"| {ratio:.2f} |")
        lines += ["", f"- slowdown no worse than spconv's: {met['target'][0]} of "
                  f"{met['target'][1]}; ours at one thread: {met['1t'][0]} of {met['1t'][1]}; "
                  f"ours faster than spconv under load: {met['faster'][0]} of "
                  f"{met['faster'][1]}", ""]
    if report.get("torch"):
        lines += ["| workload | op | torch idle / no torch | after a torch op / no torch |",
                  "|---|---|---|---|"]
        for e in report["torch"]:
            for op, rel in e["relative_to_no_torch"].items():
                lines.append(f"| {e['workload']} {e['layer']} C{e['channels']} | {op} | "
                             f"{rel['torch_idle']:.2f} | {rel['after_torch_op']:.2f} |")
        lines.append("")
    if report.get("train"):
        check = report["train"].get("spconv_check")
        if check:
            lines += [f"spconv's training net at {check['torch_threads']} torch threads "
                      f"against one thread: logits rel. err. {check['logits_rel_err']:.1e} ("
                      + ("agrees" if check["agree"] else "wrong, not timed") + ")", ""]
        lines += ["| busy | net | median ms | p90 ms | p90 / median |", "|---|---|---|---|---|"]
        for procs, got in report["train"]["by_load"].items():
            for name, v in got.items():
                if name == "load":
                    continue
                mark = _mark(v["p90_over_median"], TRAIN_P90) if str(procs) == "0" else \
                    f"{v['p90_over_median']:.2f}"
                lines.append(f"| {procs} | {name} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} "
                             f"| {mark} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("after", nargs="+")
    parser.add_argument("--before", nargs="+", default=None)
    parser.add_argument("--held-out", default=None)
    parser.add_argument("--conditions", nargs="+", default=None,
                        help="conditions runs; a part (load, torch, train) is read from "
                             "the last file that has it")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    runs = []
    for path in args.after:
        with open(path) as f:
            runs.append(json.load(f))
    after = {"results": [e for run in runs for e in run["results"]]}
    before = None
    if args.before:
        before = []
        for path in args.before:
            with open(path) as f:
                before += json.load(f)["results"]
    lines = ["# Issue 15 targets", ""]
    for path, run in zip(args.after, runs):
        env = run["environment"]
        lines.append(f"- `{path.rsplit('/', 1)[-1]}`: {env['date']}, {env['cpu']}, "
                     f"{env['threads']} threads, spconv {env.get('spconv')} (torch at "
                     f"{_threads_text(env.get('spconv_torch_threads'))} while it runs), "
                     f"load average "
                     f"{[round(v, 1) for v in env.get('loadavg_start', [])]} -> "
                     f"{[round(v, 1) for v in env.get('loadavg_end', [])]}, sgemm "
                     f"{env.get('sgemm_gflops_start', 0):.0f} / "
                     f"{env.get('sgemm_gflops_end', 0):.0f} GFLOP/s (start / end)")
    lines.append("")
    table, tallies = layer_table(after["results"], before)
    lines += ["## Layers (times: medians; ratios: median of the run-by-run ratios where "
              "recorded; ✓ meets the target, ✗ does not)", ""] + table + [""]
    for group, tally in tallies.items():   # the suite's rows and the sweep's apart
        lines += [f"- {group}: map + fwd <= {TARGET_RATIO} x spconv (subm3, gen3): "
                  f"{tally['mapfwd'][0]} of {tally['mapfwd'][1]} rows",
                  f"- {group}: fwd + bwd <= {TARGET_RATIO} x spconv (subm3, gen3): "
                  f"{tally['fwdbwd'][0]} of {tally['fwdbwd'][1]} rows",
                  f"- {group}: strided forward <= 1.0 x spconv: {tally['strided_fwd'][0]} of "
                  f"{tally['strided_fwd'][1]} rows",
                  f"- {group}: products >= {100 * SGEMM_FRACTION:.0f} % of sgemm at C >= 32 "
                  f"(fwd and fwd+bwd): {tally['sgemm'][0]} of {tally['sgemm'][1]} rows"]
    uncounted = [e for e in after["results"] if e["layer"] != "unet" and _disagreement(e)]
    if uncounted:
        lines.append("- not counted (outputs differ): " + "; ".join(
            f"{e['workload']} {e['layer']} C{e['channels']}: {_disagreement(e)}"
            for e in uncounted))
    lines.append("")
    unet = unet_table(after["results"])
    if unet:
        lines += ["## Networks", ""] + unet + [""]
    if args.held_out:
        with open(args.held_out) as f:
            held = json.load(f)
        table, tallies = layer_table(held["results"])
        tally = _total(tallies)
        lines += [f"## Held-out scans ({held['environment']['date']})", ""] + table + [""]
        lines += [f"- map + fwd: {tally['mapfwd'][0]} of {tally['mapfwd'][1]}; fwd + bwd: "
                  f"{tally['fwdbwd'][0]} of {tally['fwdbwd'][1]}; strided forward: "
                  f"{tally['strided_fwd'][0]} of {tally['strided_fwd'][1]}", ""]
    if args.conditions:
        report, dates = {}, []
        for path in args.conditions:
            with open(path) as f:
                found = json.load(f)
            parts = [part for part in ("load", "torch", "train") if found.get(part)]
            report.update({part: found[part] for part in parts})
            dates.append(f"{', '.join(parts)}: {found['environment']['date']}")
        lines += [f"## Busy machine, torch in the process, training loop "
                  f"({'; '.join(dates)})", ""] + conditions_tables(report)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
