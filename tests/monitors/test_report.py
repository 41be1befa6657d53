"""``python -m monitors report``: a table of features by windows, and a page with pictures
that a real browser draws without an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from monitors.evaluate import DetectorConfig, evaluate
from monitors.history import HISTORY_DIR, WindowHistory, history_entry
from monitors.pictures import render_html
from monitors.report import ReportError, load_report
from monitors.windows import Windows, WindowSpec
from tests._browser import render
from tests.monitors._records import backlog, consumer_records, demo_profile
from tests.monitors.test_history import service


async def history(registry: Path, tmp_path: Path) -> Path:
    """A monitor's state directory after three calm and six drifted windows."""
    monitor = service(registry, tmp_path)
    await monitor.consume(0, consumer_records(backlog()))
    monitor._save_audit()
    await monitor.webhooks.aclose()
    return tmp_path / "state"


def report(*args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "monitors",
        "report",
        "--model",
        "breast_cancer",
        "--version",
        "1",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def test_report_prints_features_by_windows(demo_registry: Path, tmp_path: Path) -> None:
    state = await history(demo_registry, tmp_path)
    done = report("--state-dir", str(state), "--last", "5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[3].split() == ["window", "5", "6", "7", "8", "9"]
    status = next(line for line in lines if line.startswith("status"))
    assert status.split()[1:] == ["drift"] * 5
    radius = next(line for line in lines if line.startswith("mean radius"))
    assert radius.count("*") == 5
    texture = next(line for line in lines if line.startswith("mean texture"))
    assert "*" not in texture
    assert report("--state-dir", str(tmp_path / "nothing")).returncode == 2


async def test_report_page_draws_in_a_real_browser(demo_registry: Path, tmp_path: Path) -> None:
    state = await history(demo_registry, tmp_path)
    page = tmp_path / "report.html"
    done = report("--state-dir", str(state), "--html", str(page), "--window", "6")
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert "<script" not in html
    assert "http" not in html  # nothing to fetch
    rendered = render(page, tmp_path / "report.png")
    assert rendered.console == [], "no console message, no error"
    assert (rendered.width, rendered.height) == (1200, 1600)
    assert rendered.png_bytes > 50_000, "a page with pictures, not a blank one"
    features = len(demo_profile().features)
    assert rendered.dom.count("<svg") == 2 * features  # a trend and histograms per feature
    assert rendered.dom.count('fill="#c0392b"') >= 6 * 3  # drifted windows marked in red
    assert "window 6: ks p=" in rendered.dom


def test_the_browser_check_sees_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><title>x</title><p>x</p><script>throw new Error('boom')</script>"
    )
    rendered = render(page, tmp_path / "broken.png")
    assert any("boom" in line for line in rendered.console)


def test_a_monitor_url_that_cannot_be_read_is_a_report_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ReportError, match="did not answer: Invalid port"):
        load_report("m", "1", url="http://[::1")
    asked: list[str] = []

    def page(url: str, **kwargs: object) -> httpx.Response:
        asked.append(url)
        return httpx.Response(200, text="<html>a proxy's page</html>")

    monkeypatch.setattr(httpx, "get", page)
    with pytest.raises(ReportError, match="not a window history"):
        load_report("a?b/c", "1", url="http://monitor:8090/")
    assert asked == ["http://monitor:8090/windows/a%3Fb%2Fc/1"]  # the name is one path segment


def test_the_page_draws_a_window_in_which_a_feature_had_no_values(tmp_path: Path) -> None:
    # its readings were made of nothing, with infinite thresholds written as null: the page
    # failed to format them
    profile = demo_profile()
    rng = np.random.default_rng(14)
    features = {name: rng.normal(size=300).tolist() for name in profile.features}
    features["mean radius"] = [None] * 300
    record = {"time": 1.0, "rows": 300, "features": features}
    ((_, summary),) = Windows(WindowSpec("count", 300, 300), profile).add([record], [0])
    result = evaluate(summary, profile, DetectorConfig(), model="m", version="1",
                      window_id="m/1/p0/1", start_time=0, end_time=1)  # fmt: skip
    history = WindowHistory(tmp_path / HISTORY_DIR)
    history.add(0, history_entry(result.to_dict(), summary, profile, 0), profile)
    history.flush()
    page = render_html(load_report("m", "1", state_dir=tmp_path))
    assert "window 1: ks p=1, PSI 0.000 (threshold 0.100), drifted" in page  # mean radius
