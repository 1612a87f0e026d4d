"""Regenerate the README's status-page screenshots from a real `modelroll demo` run.

    .venv/bin/python docs/screenshot.py                    # fresh temp home: trains the digits model (~3 min)
    .venv/bin/python docs/screenshot.py --home .demo-home  # keep the home: later runs reuse the cached model

Runs `modelroll demo --router-port 0 --controller-port 0 --keep-running` with MODELROLL_HOME set, waits for
its summary (both decisions), then opens the status pages in Debian's chromium (/usr/bin/chromium, through
Playwright; never a downloaded browser) at 1280 px wide and writes docs/images/status-rollout.png (the
promoted rollout, full page) and docs/images/status-overview.png, reduced to 256 colours (Pillow) to stay
small. The demo is stopped with SIGINT at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import ConsoleMessage, Error, sync_playwright

REPO = Path(__file__).resolve().parents[1]
MODELROLL = Path(sys.executable).parent / "modelroll"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 1280
MAX_BYTES = 400 * 1024
READY = re.compile(r"services keep running: status (?P<url>http://[\d.:\[\]]+)/ .*?admin token (?P<token>\S+)",
                   re.DOTALL)


def start_demo(home: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELROLL_HOME": str(home), "COLUMNS": "400", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONFAULTHANDLER": "1"}
    env.pop("MODELROLL_DATABASE_URL", None)  # the demo is embedded: its own SQLite under home/demo
    env.pop("MODELROLL_REDIS_URL", None)
    with log_path.open("wb") as log:
        return subprocess.Popen([str(MODELROLL), "demo", "--router-port", "0", "--controller-port", "0",
                                 "--keep-running"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_ready(demo: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> tuple[str, str]:
    """The status URL and admin token, once the demo has printed its summary and keeps running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = READY.search(text)
        if found:
            return found["url"], found["token"]
        if demo.poll() is not None:
            raise SystemExit(f"modelroll demo exited {demo.returncode} before its summary:\n{text[-3000:]}")
        time.sleep(1.0)
    raise SystemExit(f"modelroll demo printed no summary within {timeout_s:.0f} s; log: {log_path}")


def stop_demo(demo: subprocess.Popen[bytes], grace_s: float = 60.0) -> str:
    """SIGINT (Ctrl-C) as a person would; a demo that does not stop gets SIGABRT, which dumps its threads."""
    if demo.poll() is not None:
        return f"had already exited {demo.returncode}"
    demo.send_signal(signal.SIGINT)
    try:
        demo.wait(timeout=grace_s)
        return f"stopped on SIGINT, exit {demo.returncode}"
    except subprocess.TimeoutExpired:
        demo.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER=1: every thread's stack goes to the log
        try:
            demo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=10)
        return f"did NOT stop within {grace_s:.0f} s of SIGINT; aborted (thread stacks at the end of the log)"


def promoted_rollout(url: str, token: str) -> int:
    answer = httpx.get(f"{url}/v1/rollouts", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    answer.raise_for_status()
    rollouts = answer.json()["rollouts"]
    promoted = [r["id"] for r in rollouts if r["phase"] == "promoted"]
    if not promoted:
        phases = {r["id"]: r["phase"] for r in rollouts}
        raise SystemExit(f"the demo promoted no rollout (phases: {phases}); nothing to show in the README")
    return int(promoted[0])


def shoot(url: str, rollout_id: int, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = [(f"{url}/rollouts/{rollout_id}", out_dir / "status-rollout.png", 900),
             (f"{url}/", out_dir / "status-overview.png", 360)]
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    def on_page_error(error: Error) -> None:
        errors.append(error.message)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for page_url, path, height in shots:
                context = browser.new_context(viewport={"width": WIDTH, "height": height}, color_scheme="light")
                context.clock.install()  # the page reloads itself every 5 s: freeze it for the shot
                context.clock.pause_at(time.time() * 1000 + 1000)
                page = context.new_page()
                page.on("console", on_console)
                page.on("pageerror", on_page_error)
                response = page.goto(page_url)
                if response is None or response.status != 200:
                    raise SystemExit(f"{page_url} answered {response.status if response else 'nothing'}")
                page.screenshot(path=str(path), full_page=True)
                shrink(path)
                context.close()
                if errors:
                    raise SystemExit(f"{page_url} logged errors in the browser: {errors}")
        finally:
            browser.close()
    for _, path, _ in shots:
        if path.stat().st_size > MAX_BYTES:
            raise SystemExit(f"{path} is {path.stat().st_size} bytes, over the {MAX_BYTES} byte budget")
    return [path for _, path, _ in shots]


def shrink(path: Path) -> None:
    """256 colours, no dithering: the page is flat colour and text, so this looks the same at a third of the bytes."""
    from PIL import Image

    with Image.open(path) as shot:
        quantized = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                 dither=Image.Dither.NONE)
    quantized.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="MODELROLL_HOME to use and keep (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--timeout-s", type=float, default=1200.0, help="how long the demo may take")
    args = parser.parse_args()
    # Started in the background by a shell without job control, this script (and so the demo) would ignore
    # SIGINT; a handled signal is reset to its default at exec, so the demo's Ctrl-C works again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log_path = Path(tempfile.gettempdir()) / "modelroll-screenshot-demo.log"
    with tempfile.TemporaryDirectory(prefix="modelroll-shot-") as tmp:
        home = (args.home or Path(tmp) / "home").resolve()
        home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        demo = start_demo(home, log_path)
        try:
            url, token = wait_ready(demo, log_path, args.timeout_s)
            print(f"demo ready after {time.monotonic() - started:.0f} s at {url}/")
            rollout_id = promoted_rollout(url, token)
            for path in shoot(url, rollout_id, args.out):
                print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
                      f"({path.stat().st_size // 1024} KiB)")
        finally:
            stopped = stop_demo(demo)
        print(f"demo {stopped}; its log: {log_path}")


if __name__ == "__main__":
    main()
