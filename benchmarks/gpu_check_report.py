"""The last step of gpu_check.sh: one short table of what every step found.

Reads ``$OUT/steps.tsv`` (step, status, seconds, cap, last log line) and the
results the steps wrote (check.json, tests-*.xml, sanitizer-*.log,
bench_gpu.json, spconv.json), prints a table and writes ``summary.json``.
Exits 1 when a step failed or ran past its cap.

    python benchmarks/gpu_check_report.py OUT
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import xml.etree.ElementTree as ET


def _check(out):
    path = os.path.join(out, "check.json")
    if not os.path.isfile(path):
        return "no check.json"
    report = json.load(open(path, encoding="utf-8"))
    compile_rows = report.get("compile", [])
    conv_rows = report.get("convolutions", [])
    return (f"{report.get('device', 'no device')}; compiled {sum(r['ok'] for r in compile_rows)}"
            f"/{len(compile_rows)} for {','.join(report.get('archs', []))}; convolutions "
            f"{sum(r['ok'] for r in conv_rows)}/{len(conv_rows)} agree with the CPU")


def _tests(out, name):
    path = os.path.join(out, f"{name}.xml")
    if not os.path.isfile(path):
        return "no junit xml"
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    get = lambda key: int(suite.get(key, 0))  # noqa: E731
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    passed = get("tests") - get("failures") - get("errors") - get("skipped")
    text = (f"{get('tests')} tests: {passed} passed, {get('failures') + get('errors')} failed, "
            f"{get('skipped')} skipped")
    return text + (f" (first failures: {', '.join(failed[:3])})" if failed else "")


def _sanitizer(out, name):
    path = os.path.join(out, f"{name}.log")
    if not os.path.isfile(path):
        return ""
    text = open(path, encoding="utf-8", errors="replace").read()
    found = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return f"{found[-1]} errors reported" if found else "no ERROR SUMMARY line"


def _bench(out):
    path = os.path.join(out, "bench_gpu.json")
    if not os.path.isfile(path):
        return "no bench_gpu.json"
    data = json.load(open(path, encoding="utf-8"))
    best = {}
    for r in data.get("records", []):
        key = (r["product"], r["dtype"], r["channels"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    parts = [f"{p} {d} C{c}: {r['algorithm']} {r['ms']:.3g} ms, x{r.get('ratio_to_floor', 0):.1f} "
             f"floor" for (p, d, c), r in sorted(best.items())]
    return "; ".join(parts[:6]) + (" ..." if len(parts) > 6 else "")


def _spconv(out):
    path = os.path.join(out, "spconv.json")
    if not os.path.isfile(path):
        return ""
    data = json.load(open(path, encoding="utf-8"))
    ratios = [f"{r['layer']} {r['dtype']} C{r['channels']}: spconv/ours "
              f"{r['spconv_over_ours']:.2f}" for r in data.get("records", [])
              if "spconv_over_ours" in r]
    notes = "; ".join(data.get("notes", []))
    return "; ".join(ratios[:6]) or (notes[:300] if notes else "no spconv timing")


def main(argv=None) -> int:
    out = (argv or sys.argv[1:])[0]
    with open(os.path.join(out, "steps.tsv"), encoding="utf-8") as handle:
        steps = list(csv.DictReader(handle, delimiter="\t"))
    for row in steps:
        name = row["step"]
        if name == "check":
            row["result"] = _check(out)
        elif name.startswith("tests"):
            row["result"] = _tests(out, name)
        elif name.startswith("sanitizer-") and name != "sanitizer-workload":
            row["result"] = _sanitizer(out, name)
        elif name == "bench":
            row["result"] = _bench(out)
        elif name == "spconv":
            row["result"] = _spconv(out)
        else:
            row["result"] = row.get("note", "")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(steps, handle, indent=1)
    print()
    print(f"{'step':<22}{'status':<16}{'s':>7}{'cap':>6}  result")
    for row in steps:
        result = row["result"] or row.get("note", "")
        print(f"{row['step']:<22}{row['status']:<16}{float(row['seconds']):>7.1f}"
              f"{int(float(row['cap'])):>6}  {result}")
    bad = [r for r in steps if r["status"] not in ("ok", "skipped")]
    print(f"\ngpu_check: {'all steps ok' if not bad else f'{len(bad)} step(s) not ok'}; "
          f"results in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
