"""`make screenshots`: the README's pictures of the HTML dashboard, from the demo's simulation.

Replays the demo program (`pmon demo`'s simulation and settings, quietly) in one process, renders the
"PLG Onboarding" report with `cli.dashboard.render_html` and photographs it with headless Chromium:
the top of the page (header and KPI trends), the experiment and governance sections, and the incident
timeline. Only the PNGs are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cli import chromium
from cli.dashboard import render_html
from cli.main import _encoded
from monitor.report import Report, ReportRequest, build_report
from monitor.settings import Settings
from simulation.simulator import SimulationSpec, demo_program, simulate
from streams.embedded import EmbeddedDriver

log = logging.getLogger("screenshots")
INITIATIVE = "PLG Onboarding"
# (file, sections shown; None: the top of the whole page at 1280 x 2400)
SHOTS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("dashboard.png", None),
    ("dashboard-experiments-governance.png", ("experiments", "governance")),
    ("dashboard-incidents.png", ("incidents",)),
)


def demo_settings(spec: SimulationSpec, plan_dir: Path) -> Settings:
    """`pmon demo`'s settings: the simulated experiments' plans and allocations, a 20 % KPI threshold."""
    planned = {i.name: dict(zip(i.variants, i.planned_allocation, strict=True))
               for i in spec.initiatives if i.experiment}
    experiments: dict[str, Any] = {
        i.experiment: {"allocation": planned[i.name], "mde": 0.05,
                       "success_metrics": [{"metric": "conversions_per_user"}],
                       "guardrails": [{"metric": "revenue_per_user", "margin": 0.05}]}
        for i in spec.initiatives if i.experiment}
    return Settings(plan_dir=plan_dir, log_level="WARNING", allocations=planned, experiments=experiments,
                    alert_threshold=0.2)


def demo_report(days: int, plan_dir: Path) -> Report:
    spec = SimulationSpec(seed=7, days=days, initiatives=demo_program(days))
    driver = EmbeddedDriver(demo_settings(spec, plan_dir), replay=True)
    asyncio.run(driver.run(_encoded(simulate(spec))))
    window = "14d" if days <= 14 else "30d"
    report = build_report(driver.initiative_stage,
                          ReportRequest(initiative=INITIATIVE, window=window, detail="full", trends=True))
    if report is None:
        raise SystemExit(f"the simulation has no {INITIATIVE!r}")
    return report


def only(html: str, sections: tuple[str, ...]) -> str:
    """The page with every other section hidden (CSS only: the page itself is unchanged)."""
    hidden = "".join(f":not(#{name})" for name in sections)
    return html.replace("</style>", f"section{hidden} {{ display: none; }}</style>", 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14, help="simulated days (at least 4)")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args(argv)
    # The pipeline's own INFO lines (every incident transition) would bury this script's few.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    chromium.binary()  # fail before the replay, not after it
    with tempfile.TemporaryDirectory(prefix="pmon-screenshots-") as folder:
        started = time.perf_counter()
        report = demo_report(args.days, Path(folder) / "plans")
        html = render_html(report)
        log.info("replayed %d days and rendered the dashboard (%d KB) in %.0f s", args.days,
                 len(html.encode()) // 1024, time.perf_counter() - started)
        for name, sections in SHOTS:
            page = Path(folder) / f"{Path(name).stem}.html"
            page.write_text(html if sections is None else only(html, sections), encoding="utf-8")
            png = chromium.screenshot(page, args.out / name, height=2400 if sections is None else None)
            log.info("wrote %s (%d KB)", png, png.stat().st_size // 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
