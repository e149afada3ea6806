"""The MLflow UI is where users browse a study: open it in headless Chromium and look.

Starts ``mlflow ui`` on 127.0.0.1 over the tiny study's store (tests/tiny_study.py), drives Debian's
``chromium`` through the DevTools protocol (websocket via aiohttp, which MLflow itself depends on),
opens the experiment's runs page filtered to the fine-tuning runs, sorts by ``test_auc`` from the
UI's sort menu (which also shows it as a column), and checks that the runs and the metric column are
rendered. The screenshot is kept under the test's tmp dir. When Chromium is missing the test installs
Debian's ``chromium`` itself with apt-get (as root, as the SLURM test installs slurm-wlm), so the
README's test command works on a fresh machine; without root or apt-get it fails, saying so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tiny_study import LABELS, MODES, run_tiny_study


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process serving {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this test started (the server and its workers), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class DevTools:
    """The few Chrome DevTools Protocol calls this test needs, over one websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive(timeout=60)).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 90, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.5)
        text = await self.js("document.body ? document.body.innerText.slice(0, 3000) : ''")
        raise AssertionError(f"timed out waiting for {what or expression}; page text:\n{text}")

    async def click(self, selector_js: str, what: str) -> None:
        """Real mouse press/release at the centre of the element ``selector_js`` evaluates to."""
        box = await self.wait_for(
            f"(() => {{ const el = {selector_js}; if (!el) return null; el.scrollIntoView({{block: 'center'}});"
            " const r = el.getBoundingClientRect();"
            " return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()",
            what=what,
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
            await self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], **extra)


def _chromium() -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` when missing (root + apt-get needed)."""
    import fcntl

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise AssertionError("headless Chromium is needed for this test: apt-get install -y chromium (as root)")
    with open("/tmp/physfm-apt.lock", "a") as lock:  # one apt-get at a time across test sessions
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shutil.which("chromium") or shutil.which("chromium-browser")):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for cmd in (
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            ):
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
                assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "apt-get installed chromium but no chromium binary is on PATH"
    return found


async def _browse(chromium: str, url: str, shot: Path, profile: Path, metric: str) -> dict[str, Any]:
    import aiohttp

    port = _free_port()
    proc = subprocess.Popen(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}", "--window-size=2200,1000", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/json/version", 60, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws,
        ):
            dt = DevTools(ws)
            await dt.call("Page.enable")
            await dt.call("Page.navigate", url=url)
            await dt.wait_for("document.body && document.body.innerText.includes('matching runs')", what="the runs")
            # the sort menu (a Radix dropdown: needs a real pointer press) adds the metric as a column; sorted by a
            # metric, the fine-tuning runs are listed flat rather than folded under the study's parent run
            await dt.click(
                "[...document.querySelectorAll('button')].find(b => b.innerText.trim().startsWith('Sort'))",
                "the Sort button",
            )
            await dt.click(f"document.querySelector('[data-testid=\"sort-select-{metric}\"]')", f"sort by {metric}")
            await dt.call("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape")
            await dt.wait_for("document.body.innerText.includes('mode=frozen')", what="the fine-tuning runs")
            headers = await dt.wait_for(
                "(() => { const h = [...document.querySelectorAll('.ag-header-cell-text, [role=columnheader]')]"
                f".map(e => e.innerText.trim()); return h.includes('{metric}') ? h : null; }})()",
                what=f"a '{metric}' column",
            )
            await dt.js(  # fold away the assistant side panel, if this MLflow has one, to show more columns
                "(() => { const b = [...document.querySelectorAll('button[aria-label]')]"
                ".find(b => /close/i.test(b.getAttribute('aria-label'))); if (b) b.click(); })()"
            )
            await asyncio.sleep(2.0)
            text = await dt.js("document.body.innerText")
            shot_data = await dt.call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(shot_data["data"]))
            return {"headers": headers, "text": text}
    finally:
        _stop_group(proc)


@pytest.mark.slow
def test_experiment_page_shows_finetune_runs_and_metric_column(
    jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    chromium = _chromium()
    study = run_tiny_study(tmp_path_factory.mktemp("tiny_study"), jet_dataset)

    from mlflow import MlflowClient

    db = study / "results" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("tiny")
    finetune_runs = client.search_runs([exp.experiment_id], "tags.`physfm.stage` = 'finetune'")
    assert len(finetune_runs) == len(LABELS) * len(MODES)

    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    server = subprocess.Popen(
        [str(mlflow_bin), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "mlflow_ui.log", "w"),  # noqa: SIM115
        env=env,
        start_new_session=True,  # its own process group: the server's workers are stopped with it
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 240, server)
        query = urllib.parse.urlencode(
            {"searchFilter": "tags.`physfm.stage` = 'finetune'"}, quote_via=urllib.parse.quote
        )
        url = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?{query}"
        shot = tmp_path / "mlflow_ui.png"
        page = asyncio.run(_browse(chromium, url, shot, tmp_path / "chromium-profile", "test_auc"))
    finally:
        _stop_group(server)
    print(f"screenshot: {shot}")
    for run in finetune_runs:
        assert run.info.run_name in page["text"], f"run '{run.info.run_name}' not shown"
    assert "test_auc" in page["headers"]
    shown = [f"{r.data.metrics['test_auc']:.4f}"[:5] for r in finetune_runs]  # the UI rounds; compare 3 decimals
    assert any(v in page["text"] for v in shown), f"no test_auc value of {shown} on the page"
    assert shot.stat().st_size > 20_000
