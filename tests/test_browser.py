"""The playground in a real browser: JupyterLab (and Voila) driven by headless Chromium.

Each test serves a temporary copy of ``notebooks/04_playground.ipynb`` on 127.0.0.1 with
its own config, runtime and settings folders (JupyterLab's defaults otherwise: widget
messages go to a kernel subshell), on a 1024x768 page, as on a projector. It runs
every cell and checks what a person would see after each of several runs: the panel
in view, curves and the heatmap on the visible canvases (read back with
``getImageData``), the newest run's colour reaching the last round, the settings in
the kernel's status line. The JupyterLab test keeps a CPU-bound process running
meanwhile. Screenshots go to ``test-artifacts/``. Everything started is stopped in
``finally`` blocks.
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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

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
VIEWPORT = {"width": 1024, "height": 768}  # a classroom projector
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
# What the visible canvas of a figure shows: how many pixels are coloured (not white,
# grey or black), and how many match a colour, up to how far right (0..1).
PIXELS = """([figure, color]) => {
  const canvas = document.querySelector(`.fedlearn-${figure} canvas`);
  const {width, height} = canvas;
  const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
  let coloured = 0, matching = 0, right = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
    if (color && Math.hypot(r - color[0], g - color[1], b - color[2]) < 40) {
      matching++;
      right = Math.max(right, ((i / 4) % width) / width);
    }
  }
  return {coloured, matching, right};
}"""
# The page's scroll box and where the panel and its curves sit in it.
IN_VIEW = """() => {
  const box = (document.querySelector('.jp-WindowedPanel-outer')
    || document.scrollingElement).getBoundingClientRect();
  const panel = document.querySelector('.fedlearn-playground').getBoundingClientRect();
  const curves = document.querySelector('.fedlearn-curves').getBoundingClientRect();
  return {panel: panel.top - box.top, curves: curves.bottom - box.top,
          height: Math.min(box.height, window.innerHeight - box.top)};
}"""
# Every text the status line shows, however fast they follow one another.
RECORD_STATUS = """
window.__statuses = [];
new MutationObserver(records => {
  for (const r of records)
    if (r.target.closest && r.target.closest('.fedlearn-status'))
      for (const node of r.addedNodes) window.__statuses.push(node.textContent);
}).observe(document, {subtree: true, childList: true});
"""
ROUNDS = 30  # the notebook's FedConfig default
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
def busy_cpu() -> Iterator[subprocess.Popen]:
    """A process that keeps one core busy for the test (and stops by itself after
    ten minutes, should the test's own teardown never run)."""
    spin = (
        "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"
    )
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


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
            viewport=VIEWPORT,
        )
        try:
            context.set_default_timeout(STEP)
            context.add_init_script(RECORD_STATUS)
            yield context.new_page()
        finally:
            context.close()


def label(page, name: str):
    return page.locator("label", has_text=re.compile(f"^{name}$"))


def slider(page, name: str):
    return page.locator(".widget-slider", has=label(page, name))


def tooltip(page, name: str) -> str:
    """The tooltip of a control: on its label, or on the ? beside a dropdown."""
    return label(page, name).evaluate(
        """label => {
          const control = label.closest('.widget-inline-hbox');
          const info = [...control.parentElement.children]
            .find(e => e.matches('.fedlearn-info'))?.querySelector('span[title]');
          return [label.title, info?.title].find(t => t && t !== 'null') || '';
        }"""
    )


def set_slider(page, name: str, value: str) -> None:
    """Type a value into a slider's readout, as a person would."""
    readout = slider(page, name).locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+a")
    page.keyboard.type(value)
    page.keyboard.press("Enter")
    readout.evaluate("e => e.blur()")
    page.wait_for_function(  # the readout shows the slider's new value
        "([r, v]) => Number(r.textContent) === v",
        arg=[readout.element_handle(), float(value)],
        timeout=30_000,
    )


def choose(page, name: str, option: str) -> None:
    """Pick the option whose label starts with ``option`` in a dropdown."""
    select = page.locator(".widget-dropdown", has=label(page, name)).locator("select")
    labels = select.locator("option").all_inner_texts()
    select.select_option(label=next(t for t in labels if t.startswith(option)))


def set_seed(page, seed: int) -> None:
    box = page.locator(".widget-text", has=label(page, "seed")).locator("input")
    box.fill(str(seed))
    box.press("Enter")


def button(page, name: str):
    text = re.compile(rf"^\s*{name}$")  # after the icon
    return page.locator(".fedlearn-playground button.jupyter-button", has_text=text)


def status(page) -> str:
    return page.locator(".fedlearn-status").inner_text()


def current_color(page) -> list[int]:
    """The colour of the run in bold in the run list (the current run)."""
    swatch = page.locator(".fedlearn-run:has(b) .fedlearn-swatch")
    style = swatch.get_attribute("style")
    hex_color = re.search(r"#([0-9a-fA-F]{6})", style)[1]
    return [int(hex_color[i : i + 2], 16) for i in (0, 2, 4)]


def pixels(page, figure: str, color: list[int] | None = None) -> dict[str, float]:
    return page.evaluate(PIXELS, [figure, color])


def check_rendered(page) -> None:
    """Every widget of the panel is on screen, with no widget error."""
    text = " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
    assert "Loading widget" not in text and "Error displaying widget" not in text
    for name in ("num_devices", "participation", "partition", "skew", "server_steps"):
        assert label(page, name).is_visible()
        assert len(tooltip(page, name).split()) >= 8  # in plain words
    for name in ("Run", "Stop", "Clear", "Pin"):
        assert button(page, name).is_visible()
    panel = page.locator(".fedlearn-playground")
    assert panel.get_by_text("compare with plain FedAvg").is_visible()
    for figure in ("curves", "heatmap", "devices"):
        canvas = page.locator(f".fedlearn-{figure} canvas").first
        assert canvas.bounding_box()["width"] > 200


def check_figures(page, shot: str, *, complete: bool = True) -> None:
    """The visible curves canvas shows curves, in the current run's colour and (for a
    finished run) up to the last round: its final frame arrived; the heatmap shows the
    partition. Waits for the pictures, never for a number of frames."""
    color = current_color(page)
    page.locator(".fedlearn-curves").scroll_into_view_if_needed()
    reach = 0.9 if complete else 0.0  # the last round sits at the right of the axes
    curves = f"""args => {{ const p = ({PIXELS})(args);
        return p.coloured > 300 && p.matching > 100 && p.right > {reach}; }}"""
    wait_for(page, curves, ["curves", color])
    page.locator(".fedlearn-heatmap").scroll_into_view_if_needed()
    wait_for(page, f"args => ({PIXELS})(args).coloured > 5000", ["heatmap", None])
    page.locator(".fedlearn-curves").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / f"{shot}.png")


def wait_for(page, condition: str, arg: list) -> None:
    """Wait until the picture condition holds; if it never does, say what was seen."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, arg=arg, timeout=60_000)
    except PlaywrightTimeout:
        seen = page.evaluate(PIXELS, arg)
        raise AssertionError(f"{arg}: {seen}; status {status(page)!r}") from None


def run(page, shot: str, *, expect: str = "") -> str:
    """Click Run, follow the status to the end of the run, check what it shows."""
    page.locator(".fedlearn-anchor").scroll_into_view_if_needed()
    before = page.evaluate("() => window.__statuses.length")
    button(page, "Run").click()
    page.wait_for_function(
        "n => window.__statuses.slice(n).some(s => / done /.test(s))", arg=before
    )
    shown = page.evaluate("n => window.__statuses.slice(n)", before)
    rounds = {int(m[1]) for s in shown if (m := re.fullmatch(r"round (\d+)/\d+", s))}
    assert len(rounds) >= 3, f"the status grew in too few steps: {shown}"
    text = status(page)
    assert expect in text, text
    assert not button(page, "Run").is_disabled()
    check_figures(page, shot)
    return text


def stop_mid_run(page, shot: str) -> None:
    """A new seed, Run, Stop after a few rounds: the run ends there and keeps them."""
    set_seed(page, 1)
    button(page, "Run").click()
    # Any round from 3 on: under load the page may show round 12 as the first after 2.
    mid_run = "|".join(str(r) for r in range(3, ROUNDS))
    page.wait_for_selector(f".fedlearn-status:text-matches('^round ({mid_run})/')")
    button(page, "Stop").click()
    page.wait_for_selector(".fedlearn-status:has-text('stopped')", timeout=30_000)
    stopped = re.match(r"round (\d+)/", status(page))
    assert 3 <= int(stopped[1]) < ROUNDS and "seed=1" in status(page)
    assert not button(page, "Run").is_disabled() and button(page, "Stop").is_disabled()
    check_figures(page, shot, complete=False)


def check_in_view(page) -> None:
    """The panel's top and its curves are on screen (not scrolled past)."""
    try:
        in_view = "v.panel >= -5 && v.panel < 200"
        page.wait_for_function(f"() => {{ const v = ({IN_VIEW})(); return {in_view} }}")
    finally:
        view = page.evaluate(IN_VIEW)
        page.screenshot(path=str(ARTIFACTS / "in-view-last.png"))
        (ARTIFACTS / "in-view-last.json").write_text(json.dumps(view))
    assert view["curves"] <= view["height"] + 5, view


def shutdown_kernels(url: str, token: str) -> None:
    """Delete the server's kernels (each holds torch: about 270 MB)."""
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(Request(f"{url}/api/kernels", headers=headers)) as r:
        kernels = json.load(r)
    for kernel in kernels:
        delete = Request(f"{url}/api/kernels/{kernel['id']}", headers=headers)
        delete.method = "DELETE"
        urllib.request.urlopen(delete, timeout=30).close()


def try_settings(page) -> None:
    """Five more runs through the controls a class would try, checked after each."""
    set_slider(page, "rounds", "12")
    button(page, "Clear").click()  # the x-axis now ends at round 12
    page.wait_for_selector(".fedlearn-status:text-is('cleared')")
    choose(page, "server_schedule", "feddu")  # FedDU: server_steps does nothing
    page.wait_for_selector(
        ".widget-slider:has(label:text-is('server_steps')) [disabled]"
    )
    tip = tooltip(page, "server_steps")
    assert tip.startswith("Has no effect now: FedDU sets the server steps")
    run(page, "lab-3-feddu", expect="FedDU")

    set_slider(page, "shared_fraction", "0")  # FedDU needs a shared dataset
    page.wait_for_selector(".fedlearn-error:has-text('Change server_schedule')")
    assert status(page) == ""
    page.wait_for_function(  # greyed out: the colours are washed out
        f"args => ({PIXELS})(args).coloured < 500", arg=["heatmap", None]
    )
    page.locator(".fedlearn-anchor").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "lab-4-invalid.png")
    set_slider(page, "shared_fraction", "0.05")

    choose(page, "partition", "shards")  # the skew control: shards per device
    page.wait_for_function(
        "() => /^\\s*2\\s*$/.test([...document.querySelectorAll('.widget-slider')]"
        ".find(s => s.querySelector('label')?.textContent === 'skew')"
        ".querySelector('.widget-readout').textContent)"
    )
    run(page, "lab-5-shards", expect="partition=shards")

    choose(page, "server_schedule", "fixed")  # FedDU needs shared_use="adjust"
    choose(page, "shared_use", "hybrid")  # Hybrid-FL: the server steps do nothing
    page.wait_for_selector(".widget-slider:has(label:text-is('server_lr')) [disabled]")
    run(page, "lab-6-hybrid", expect="Hybrid-FL")

    page.locator(".fedlearn-playground label", has_text=re.compile("^large$")).click()
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector('.fedlearn-status')).fontSize"
        " === '20px'"
    )
    set_seed(page, 7)
    text = run(page, "lab-7-large", expect="seed=7")
    box = page.locator(".fedlearn-status").evaluate(
        "e => [e.scrollWidth, e.clientWidth, e.clientHeight]"
    )
    assert box[0] <= box[1] + 1, f"the status is cut off: {box}, {text!r}"


def test_playground_in_jupyterlab(workdir: Path, busy_cpu: subprocess.Popen):
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
                # The top cell says how to start.
                page.wait_for_selector(".jp-RenderedMarkdown:has-text('Run All Cells')")
                page.evaluate(RUN_ALL_WHEN_CONNECTED)
                page.wait_for_function(ALL_CELLS_RAN)
                page.wait_for_selector(f".fedlearn-status:has-text('{ROUNDS} done')")
                # JupyterLab's default: widget messages go to a kernel subshell.
                subshells = "() => window.jupyterapp.serviceManager.kernels"
                assert page.evaluate(f"{subshells}.commsOverSubshells") != "disabled"
                check_in_view(page)
                page.screenshot(path=ARTIFACTS / "lab-0-run-all.png")
                check_rendered(page)
                check_figures(page, "lab-0-first-run")

                set_slider(page, "participation", "0.5")
                set_slider(page, "server_steps", "10")
                run(page, "lab-1-run", expect="server_steps=10, participation=0.5")
                stop_mid_run(page, "lab-2-stopped")
                try_settings(page)
                assert busy_cpu.poll() is None  # the CPU was busy throughout
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
            page.wait_for_selector(f".fedlearn-status:has-text('{ROUNDS} done')")
            assert "fl.widgets.Playground" not in page.locator("body").inner_text()
            check_in_view(page)
            check_rendered(page)
            check_figures(page, "voila-0-first-run")
            set_slider(page, "participation", "0.5")
            set_slider(page, "server_steps", "10")
            run(page, "voila-1-run", expect="server_steps=10, participation=0.5")
            stop_mid_run(page, "voila-2-stopped")
