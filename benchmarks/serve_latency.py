"""Time from pressing Segment to the mask drawn in the viewer, in mednca serve's page in a real
browser (Debian's chromium driven by Playwright), for given scans and a shipped model.

    python benchmarks/serve_latency.py ../shared/data/Task04_Hippocampus/imagesTr/hippocampus_007.nii.gz --repeat 3

Prints one line per run and the median; the server runs in this process (uvicorn, one worker).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from mednca.web.app import create_app
from mednca.web.models import load_served


def serve(port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(create_app(load_served()), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+", type=Path)
    parser.add_argument("--model", default="hippocampus")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server, thread = serve(args.port)
    chromium = shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--enable-unsafe-swiftshader", "--use-angle=swiftshader"])
        for scan in args.scans:
            times = []
            for _ in range(args.repeat):
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{args.port}/")
                page.wait_for_selector(f"#model option[value={args.model}]", state="attached")
                page.select_option("#model", args.model)
                page.set_input_files("#file", str(scan))
                start = time.perf_counter()
                page.click("#segment")
                page.wait_for_selector("body[data-viewer=ready]", timeout=600_000)
                times.append(time.perf_counter() - start)
                print(f"{scan.name}: {times[-1]:.2f} s from Segment to overlay", flush=True)
                page.close()
            print(f"{scan.name}: median {statistics.median(times):.2f} s over {len(times)} runs ({args.model})")
        browser.close()
    server.should_exit = True
    thread.join(timeout=60)  # the app's shutdown deletes its job folders
    return 0


if __name__ == "__main__":
    sys.exit(main())
