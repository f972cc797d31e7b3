"""The playground in a real browser: JupyterLab (and Voila) driven by headless Chromium.

Each test serves a temporary copy of ``notebooks/04_playground.ipynb`` on 127.0.0.1 with
its own config, runtime and settings folders, runs every cell, moves two sliders,
clicks Run and checks what a person would see: the widgets rendered, one redraw of the
curve per round, and the new settings in the kernel's final status line. Screenshots
go to ``test-artifacts/``. Everything started is stopped in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import Request

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480)]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_playground.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Counts frames painted onto the visible canvas of each ipympl figure of the panel
# (ipympl first draws each image from the kernel on an offscreen canvas, not counted).
COUNT_DRAWS = """
window.__draws = {curves: 0, heatmap: 0};
const drawImage = CanvasRenderingContext2D.prototype.drawImage;
CanvasRenderingContext2D.prototype.drawImage = function (...args) {
  const box = this.canvas.isConnected
    && this.canvas.closest('.fedlearn-curves, .fedlearn-heatmap');
  if (box) window.__draws[box.matches('.fedlearn-curves') ? 'curves' : 'heatmap']++;
  return drawImage.apply(this, args);
};
"""
RUN_ALL_WHEN_CONNECTED = """async () => {
  const app = window.jupyterapp, panel = app.shell.currentWidget;
  await panel.sessionContext.ready;
  const kernel = () => panel.sessionContext.session?.kernel;
  while (kernel()?.connectionStatus !== 'connected' || kernel()?.status !== 'idle')
    await new Promise(resolve => setTimeout(resolve, 100));
  app.commands.execute('notebook:run-all-cells');  // resolves when all ran: no await
}"""
ALL_CELLS_RAN = """() =>
  [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
    .every(prompt => /\\[\\d+\\]/.test(prompt.textContent))"""
ROUNDS = 30  # the notebook's FedConfig default
DONE = f"round {ROUNDS}/{ROUNDS} done"
STEP = 120_000  # ms allowed for one slow step (kernel start, run all, a 30-round run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(cmd: list[str], url: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """Run a server in its own process group until the block ends; wait until ``url``
    answers (any HTTP status)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except urllib.error.HTTPError:  # it answers: up
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"server did not start:\n{log.read_text()}"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the playground notebook and private Jupyter folders."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make /usr/bin/chromium` (apt-get)")
    (tmp_path / "nb").mkdir()
    shutil.copy(NOTEBOOK, tmp_path / "nb" / NOTEBOOK.name)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    no_news = {"fetchNews": "false", "checkForUpdates": False}  # no toast over the page
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(no_news))
    ARTIFACTS.mkdir(exist_ok=True)
    return tmp_path


def jupyter_env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(workdir / "config"),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "IPYTHONDIR": str(workdir / "ipython"),
    }


@contextmanager
def browser_page(workdir: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(workdir / "chromium"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            context.set_default_timeout(STEP)
            context.add_init_script(COUNT_DRAWS)
            yield context.new_page()
        finally:
            context.close()


def slider(page, name: str):
    label = page.locator("label", has_text=re.compile(f"^{name}$"))
    return page.locator(".widget-slider", has=label)


def set_slider(page, name: str, value: str) -> None:
    """Type a value into a slider's readout, as a person would."""
    readout = slider(page, name).locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+a")
    page.keyboard.type(value)
    page.keyboard.press("Enter")
    handle = slider(page, name).locator(".noUi-handle")
    assert float(handle.get_attribute("aria-valuenow")) == float(value)


def button(page, name: str):
    text = re.compile(rf"^\s*{name}$")  # after the icon
    return page.locator(".fedlearn-playground button.widget-button", has_text=text)


def status(page) -> str:
    return page.locator(".fedlearn-status").inner_text()


def draws(page) -> dict[str, int]:
    return page.evaluate("() => ({...window.__draws})")


def check_rendered(page) -> None:
    """Every widget of the panel is on screen, with no widget error."""
    text = page.locator("body").inner_text()
    assert "Loading widget" not in text and "Error displaying widget" not in text
    for name in ("num_devices", "participation", "partition", "skew", "server_steps"):
        assert page.locator("label", has_text=re.compile(f"^{name}$")).is_visible()
    panel = page.locator(".fedlearn-playground")
    for name in ("Run", "Stop", "Clear"):
        assert button(page, name).is_visible()
    assert panel.get_by_text("compare with plain FedAvg").is_visible()
    for figure in ("curves", "heatmap"):
        canvas = page.locator(f".fedlearn-{figure} canvas").first
        assert canvas.bounding_box()["width"] > 200
    assert draws(page)["curves"] > 0 and draws(page)["heatmap"] > 0


def run_with_new_settings(page, shot: str) -> None:
    """Move participation and server_steps, click Run, follow it to the last round."""
    panel = page.locator(".fedlearn-playground")
    panel.screenshot(path=ARTIFACTS / f"{shot}-before-panel.png")
    set_slider(page, "participation", "0.5")
    set_slider(page, "server_steps", "10")
    before = draws(page)
    started = time.monotonic()
    button(page, "Run").click()
    page.wait_for_function(
        "() => !/done/.test(document.querySelector('.fedlearn-status').innerText)"
    )
    seen, deadline = set(), time.monotonic() + STEP / 1000
    while "done" not in (text := status(page)):
        if m := re.fullmatch(rf"round (\d+)/{ROUNDS}", text):
            seen.add(int(m[1]))
            if len(seen) == 3:
                page.screenshot(path=ARTIFACTS / f"{shot}-mid.png")
        assert time.monotonic() < deadline, f"no end of run, status {text!r}"
        page.wait_for_timeout(50)
    seconds = time.monotonic() - started
    page.wait_for_timeout(1000)  # the last frame
    after = draws(page)
    page.screenshot(path=ARTIFACTS / f"{shot}-after.png")
    panel.screenshot(path=ARTIFACTS / f"{shot}-after-panel.png")

    assert len(seen) >= 5, f"the status grew in too few steps: {sorted(seen)}"
    # The settings reached the kernel: it labels the run by what differed.
    assert text.startswith(f"round {ROUNDS}/{ROUNDS} done")
    assert "participation=0.5, server_steps=10" in text
    # One frame per round at least: the playground waits for the browser's request
    # for each frame before drawing the next round (ipympl paints each image it gets
    # from the kernel once onto the visible canvas).
    frames = after["curves"] - before["curves"]
    record = dict(run_seconds=round(seconds, 1), frames=frames, rounds_seen=len(seen))
    (ARTIFACTS / f"{shot}-run.json").write_text(json.dumps(record))
    assert frames >= ROUNDS, f"{frames} frames for {ROUNDS} rounds"
    assert after["heatmap"] == before["heatmap"]  # the partition did not change


def shutdown_kernels(url: str, token: str) -> None:
    """Delete the server's kernels (each holds torch: about 270 MB)."""
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(Request(f"{url}/api/kernels", headers=headers)) as r:
        kernels = json.load(r)
    for kernel in kernels:
        delete = Request(f"{url}/api/kernels/{kernel['id']}", headers=headers)
        delete.method = "DELETE"
        urllib.request.urlopen(delete, timeout=30).close()


def stop_mid_run(page) -> None:
    """A new seed, Run, Stop after a few rounds: the run ends there and keeps them."""
    seed = page.locator(".widget-text", has=page.locator("label", has_text="seed"))
    seed.locator("input").fill("1")
    seed.locator("input").press("Enter")
    button(page, "Run").click()
    page.wait_for_selector(".fedlearn-status:text-matches('^round [3-9]/')")
    button(page, "Stop").click()
    page.wait_for_selector(".fedlearn-status:has-text('stopped')", timeout=30_000)
    stopped = re.match(r"round (\d+)/", status(page))
    assert 3 <= int(stopped[1]) < ROUNDS and "seed=1" in status(page)
    assert not button(page, "Run").is_disabled() and button(page, "Stop").is_disabled()


def test_playground_in_jupyterlab(workdir: Path):
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    cmd = [
        *(sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root"),
        *("--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}"),
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={workdir / 'nb'}",
        f"--LabApp.workspaces_dir={workdir / 'workspaces'}",
        f"--LabApp.user_settings_dir={workdir / 'settings'}",
        "--expose-app-in-browser",  # window.jupyterapp
    ]
    ready = f"{url}/api/status?token={token}"
    with serve(cmd, ready, workdir / "lab.log", jupyter_env(workdir)):
        try:
            with browser_page(workdir) as page:
                page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}&reset")
                page.wait_for_selector(".jp-Notebook")
                page.evaluate(RUN_ALL_WHEN_CONNECTED)
                page.wait_for_function(ALL_CELLS_RAN)
                page.wait_for_selector(f".fedlearn-status:has-text('{DONE}')")
                page.wait_for_timeout(1000)  # the first frames
                check_rendered(page)
                page.screenshot(path=ARTIFACTS / "lab-before.png")
                run_with_new_settings(page, "lab")
                stop_mid_run(page)
        finally:
            with contextlib.suppress(OSError):
                shutdown_kernels(url, token)


def test_playground_in_voila(workdir: Path):
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    cmd = [
        *(sys.executable, "-m", "voila", str(workdir / "nb" / NOTEBOOK.name)),
        *("--no-browser", "--Voila.ip=127.0.0.1", f"--Voila.port={port}"),
        *("--Voila.port_retries=0", f"--Voila.token={token}"),
    ]
    with serve(
        cmd, f"{url}/voila/static/", workdir / "voila.log", jupyter_env(workdir)
    ):
        with browser_page(workdir) as page:
            page.goto(f"{url}/?token={token}")
            page.wait_for_selector(f".fedlearn-status:has-text('{DONE}')")
            page.wait_for_timeout(1000)  # the first frames
            assert "fl.widgets.Playground" not in page.locator("body").inner_text()
            check_rendered(page)
            run_with_new_settings(page, "voila")
            stop_mid_run(page)
