"""A finished 100-trial scripted study seen in a real browser (headless Chromium from
Debian's packages, driven over the DevTools pipe by tests/tracking/browser_cdp.py): the
report, and ``jointopt dashboard``'s optuna-dashboard and MLflow UI on 127.0.0.1.

Screenshots go to ``$JOINTOPT_SCREENSHOTS`` (default: the test's temporary folder).
Skipped, with the reason, where no Chromium is installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_cdp import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 100
READY = "document.body && document.body.dataset.ready === '1'"


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium to drive: install Debian's package (apt-get install -y "
                    "chromium; .ci/run does)")
    return binary


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("JOINTOPT_SCREENSHOTS") or tmp_path_factory.mktemp("screens"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 100-trial study on the scripted backend, tracked in MLflow."""
    from jointopt.search.config import load_config
    from jointopt.search.study import run_study
    from jointopt.testing import scripted_backend

    out = tmp_path_factory.mktemp("browser") / "run"
    config = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(out), "optimizer": {"n_trials": N_TRIALS, "sampler": "random"},
        "validation": {"test_fraction": 0.3}})
    result = run_study(config, backend=scripted_backend(
        engine_kwargs={"responder": "reverse_words"}))
    assert len(result.proposed) == N_TRIALS
    return result


def _point_position(browser: Browser, trial: dict) -> tuple[float, float]:
    """Viewport pixel position of ``trial``'s point on the front chart."""
    return tuple(browser.evaluate(f"""(() => {{
        const gd = document.getElementById('front-plot'), fl = gd._fullLayout;
        const box = gd.getBoundingClientRect();
        return [box.left + fl._size.l + fl.xaxis.l2p({trial['tok']}),
                box.top + fl._size.t + fl.yaxis.l2p({trial['acc']})];
    }})()"""))


def test_report_opens_fast_without_errors_and_hover_shows_the_policy(chromium, study,
                                                                     screens):
    report = study.out_dir / "report.html"
    size = report.stat().st_size
    assert size < 5e6, f"the report of {N_TRIALS} trials is {size / 1e6:.2f} MB"
    with Browser(chromium) as browser:
        opened, cpu = [], []
        for attempt in range(3):  # median of three loads
            before = browser.cpu_seconds()
            browser.open(f"{report.as_uri()}?load={attempt}", ready=READY)
            cpu.append(browser.cpu_seconds() - before)
            opened.append(browser.evaluate("window.reportReadyMs") / 1000)
        load = os.getloadavg()[0]
        print(f"report of {N_TRIALS} trials: {size / 1e6:.2f} MB; ready after {opened} s "
              f"(renderer CPU {cpu} s; load average {load:.1f} on {os.cpu_count()} CPUs)")
        assert statistics.median(cpu) < 2.0, f"opening took {cpu} s of CPU"
        if load < (os.cpu_count() or 1):  # other processes would slow down any page
            assert statistics.median(opened) < 2.0, f"opening took {opened} s"
        assert not browser.exceptions, browser.exceptions
        errors = [line for line in browser.console if line.startswith(("error", "warning"))]
        assert not errors, errors
        assert browser.evaluate("document.getElementById('errors').hidden") is True
        data = browser.evaluate("JSON.parse(document.getElementById('report-data').textContent)")
        points = browser.evaluate(
            "[...document.querySelectorAll('#front-plot .scatterlayer .trace')]"
            ".map(t => t.querySelectorAll('.point').length)")
        assert points[0] == len(study.trials) and points[1] == len(data["front"]) > 0
        browser.screenshot(screens / "report.png")

        by_number = {t["n"]: t for t in data["trials"]}
        shown = int(browser.evaluate("document.getElementById('policy-detail').dataset.trial"))
        target = next(by_number[n] for n in data["front"] if n != shown)
        browser.mouse_move(*_point_position(browser, target))
        browser.wait_for(f"document.getElementById('policy-detail').dataset.trial !== '{shown}'",
                         timeout=10)
        hovered = by_number[int(browser.evaluate(
            "document.getElementById('policy-detail').dataset.trial"))]
        assert (hovered["acc"], hovered["tok"]) == (target["acc"], target["tok"])
        detail = browser.evaluate("document.getElementById('policy-detail').innerText")
        policy = data["policies"][str(hovered["n"])]
        prompt = data["prompts"][policy["prompt"]]
        assert f"trial {hovered['n']}" in detail and prompt["user"].strip() in detail
        for bin_name, alloc in policy["bins"].items():
            assert bin_name in detail and f"max_tokens={alloc['max_tokens']}" in detail
        tooltip = browser.evaluate("document.querySelector('#front-plot .hoverlayer').textContent")
        assert f"trial {hovered['n']}" in tooltip and prompt["id"] in tooltip
        browser.screenshot(screens / "report_hover.png")
        assert not browser.exceptions, browser.exceptions


@pytest.fixture
def dashboard(study):
    """``jointopt dashboard`` on the study (free ports), with the links it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from jointopt.cli.app import main; "
                               "sys.exit(main(sys.argv[1:]))",
         "dashboard", str(study.out_dir), "--optuna-port", "0", "--mlflow-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="300"))
    links, lines = {}, []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.match(r"(optuna-dashboard|MLflow UI|report): (\S+)", line)
        if found:
            links[found.group(1)] = found.group(2)
        if line.startswith("press Ctrl-C"):
            break
    try:
        assert {"optuna-dashboard", "MLflow UI", "report"} <= set(links), "".join(lines)
        yield links
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, "".join(lines) + rest
    assert "dashboards stopped" in rest


def test_dashboards_show_the_study_and_its_front(chromium, study, dashboard, screens):
    with Browser(chromium) as browser:
        browser.open(dashboard["optuna-dashboard"], timeout=60, ready=(
            "document.body.innerText.includes('Pareto Front') && "
            "document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length > 0"))
        time.sleep(1.0)  # the other charts of the page draw after the first
        assert study.study_name in browser.evaluate("document.body.innerText")
        names = browser.evaluate("document.body.innerText")
        assert "accuracy" in names and "mean_tokens" in names, "objective names are shown"
        front_points = browser.evaluate(
            "document.querySelectorAll('.js-plotly-plot')[0]"
            ".querySelectorAll('.scatterlayer .point').length")
        assert front_points == len(study.trials)  # proposed and derived
        browser.screenshot(screens / "optuna_dashboard.png")

        run = dashboard["MLflow UI"]
        assert re.search(r"#/experiments/\d+/runs/[0-9a-f]{32}$", run)
        browser.open(f"{run}/artifacts/report.html", timeout=120, ready=(
            "document.body.innerText.includes('pareto_front.json') && "
            "document.querySelector('iframe')"))
        frame = browser.child_frames()[-1]  # the artifact view shows the report in an iframe
        browser.wait_for(READY, timeout=60, frame=frame)
        frame_points = browser.evaluate(
            "document.querySelectorAll('#front-plot .scatterlayer .point').length", frame)
        assert frame_points > N_TRIALS, "the report in MLflow shows the front with its points"
        browser.screenshot(screens / "mlflow_report_artifact.png")

        browser.open("about:blank")  # a fresh load (not a route change inside the app)
        browser.open(f"{run}/artifacts/pareto_front.json", timeout=60,
                     ready="document.body.innerText.includes('test_accuracy')")
        table = json.loads((study.out_dir / "pareto_front.json").read_text())
        text = browser.evaluate("document.body.innerText")
        assert all(str(n) in text for n in table["columns"])
        browser.screenshot(screens / "mlflow_front_table.png")


def test_report_of_an_empty_study_and_a_difficulty_report_render_without_errors(
        chromium, study, tmp_path):
    import optuna

    from jointopt.tracking.report import study_report

    (tmp_path / "difficulty_report.json").write_text(json.dumps({
        "prompts": {"fewshot": {"thresholds": [0.6], "agreement": {
            "n": 21, "exact": 0.62, "within_one": 0.95, "spearman": 0.48}}}}))
    loaded = optuna.load_study(study_name=study.study_name,
                               storage=f"sqlite:///{study.out_dir}/optuna.db")
    with_difficulty = study_report(loaded, tmp_path, path=tmp_path / "difficulty.html")
    empty = study_report(optuna.create_study(directions=["maximize", "minimize"]),
                         tmp_path / "empty")
    with Browser(chromium) as browser:
        browser.open(with_difficulty.as_uri(), ready=READY)
        text = browser.evaluate("document.getElementById('difficulty').innerText")
        assert "prompts / fewshot / agreement" in text and "0.62" in text and "0.48" in text
        browser.open(empty.as_uri(), ready=READY)
        assert browser.evaluate("document.getElementById('errors').hidden") is True
        assert not browser.exceptions, browser.exceptions
