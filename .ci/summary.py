"""Add up the JUnit reports of one CI run (host suites and guest suites) into one line."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
reports = sorted(root.glob("build/reports/*.xml")) + sorted(root.glob("build/guest/kernel*/junit.xml"))
totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for report in reports:
    for suite in ElementTree.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"{len(reports)} JUnit reports (host suites per Python, guest suites per module build)")
print(f"tests: {passed} passed, {failed} failed" + (f", {totals['skipped']} skipped" if totals["skipped"] else ""))
