"""The operator's status page in a real browser (Debian's chromium, driven by playwright's
async API on the test's own loop, next to the gateway): sign-in, the live replica table, a
replica seen changing state, a refused and an accepted cutover from the page's form, the
traffic profile's coverage figure once users send traffic.
Takes a screenshot; with WARMGW_SCREENSHOT=1 it replaces docs/status-page.png."""

from __future__ import annotations

import os
import re
import struct
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import gateway_config, wait_all_ready
from tests.scenario import Load
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"
TOKEN = "page-token-1"
SVG_NS = "http://www.w3.org/2000/svg"  # a name, never fetched
SIM = SimConfig(ttft_base=0.02, itl=0.01, max_running=16)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="no /usr/bin/chromium: run scripts/install-browser.sh (in CI this test never skips)",
)


async def admin(gw: Gateway, method: str, path: str, body: object = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.request(
        method, gw.admin_url + "/admin/v1" + path, json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as r:
        return r.status, await r.json()


async def test_static_files_are_open_and_the_api_is_not():
    async with SimFleet(SIM, replicas=1) as fleet:
        cfg = gateway_config([fleet.urls[0]], admin={"port": 0, "token": TOKEN})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            for path, ctype in [("/", "text/html"), ("/index.html", "text/html"),
                                ("/static/app.js", "text/javascript"),
                                ("/static/style.css", "text/css")]:
                async with s.get(gw.admin_url + path) as r:
                    assert r.status == 200 and r.content_type == ctype, path
                    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                    urls = set(re.findall(r"https?://[^\s\"'`)]+", await r.text()))
                    assert urls <= {SVG_NS}, f"{path} names another site: {urls}"
                    etag = r.headers["ETag"]
                async with s.get(gw.admin_url + path, headers={"If-None-Match": etag}) as r:
                    assert r.status == 304
            for path in ["/static/nope.js", "/static/..%2Fwebpage.py", "/static/"]:
                async with s.get(gw.admin_url + path) as r:
                    assert r.status == 404, path
            async with s.get(gw.admin_url + "/admin/v1/status") as r:
                assert r.status == 401


async def test_status_page_in_a_browser(tmp_path):
    from playwright.async_api import async_playwright, expect

    t0 = time.monotonic()
    # the spare replica loads for a while, so the page sees it probing before it warms
    sims = [replace(SIM, seed=i) for i in range(3)] + [replace(SIM, seed=3, load_time=2.0)]
    async with SimFleet(sims) as fleet:
        blue, green, spare = fleet.urls[:2], fleet.urls[2], fleet.urls[3]
        replicas = [{"name": f"blue-{i}", "url": u, "pool": "blue"} for i, u in enumerate(blue)]
        replicas.append({"name": "green-0", "url": green, "pool": "green"})
        cfg = gateway_config({}, replicas=replicas, policy={"active": "blue"},
                             admin={"port": 0, "token": TOKEN})
        async with Gateway(cfg) as gw, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                problems: list[str] = []
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                expected = re.compile(r"status of (401|409) ")  # the refusals asked for below
                page.on("console", lambda m: problems.append(f"console: {m.text}")
                        if m.type == "error" and not expected.search(m.text) else None)
                page.on("request", lambda r: problems.append(f"off-site request: {r.url}")
                        if not r.url.startswith(gw.admin_url) else None)
                await wait_all_ready(gw, timeout=30)

                # sign in: a wrong token is refused with a message, the right one gets in
                await page.goto(gw.admin_url + "/")
                await expect(page.locator("#login-form")).to_be_visible()
                await expect(page.locator("#dash")).to_be_hidden()
                await page.fill("#token", "not-the-token")
                await page.click("#login-submit")
                await expect(page.locator("#login-error")).to_contain_text("refused this token")
                await page.fill("#token", TOKEN)
                await page.click("#login-submit")
                rows = page.locator("#replicas tbody tr[data-replica]")
                await expect(rows).to_have_count(3)
                for name in ("blue-0", "blue-1", "green-0"):
                    row = page.locator(f'#replicas tr[data-replica="{name}"]')
                    await expect(row).to_have_attribute("data-state", "ready")
                    await expect(row.locator(".state")).to_have_text("ready")
                await expect(page.locator("#active-pool")).to_have_text("blue")

                async with Load(gw.url, concurrency=4, max_tokens=8):
                    # a refused cutover: green has 1 warm replica and needs 2
                    await page.select_option("#cut-to", "green")
                    await page.click("#cut-go")
                    await page.click("#confirm-yes")
                    msg = page.locator("#action-msg")
                    await expect(msg).to_contain_text("refused (409)")
                    await expect(msg).to_contain_text("has 1 warm replica(s), needs 2")
                    assert gw.bluegreen.active == "blue"

                    # a replica added through the API shows up cold and is seen becoming ready
                    await fleet.replicas[3].restart()  # loading again: probes get 503
                    status, res = await admin(gw, "POST", "/replicas",
                                              {"name": "green-1", "url": spare, "pool": "green"})
                    assert status == 201, res
                    new = page.locator('#replicas tr[data-replica="green-1"]')
                    await expect(new).to_have_attribute("data-state", "probing")
                    await expect(new).to_have_attribute("data-state", "ready", timeout=30_000)
                    trans = page.locator("#transitions tbody tr", has_text="green-1")
                    await expect(trans.filter(has_text="warming").first).to_be_visible()

                    # the same cutover from the page now goes through
                    await page.select_option("#cut-to", "green")
                    await page.click("#cut-go")
                    await expect(page.locator("#confirm-text")).to_contain_text("blue → green")
                    await page.click("#confirm-yes")
                    await expect(msg).to_contain_text("done")
                    await expect(page.locator("#active-pool")).to_have_text("green")
                    assert gw.bluegreen.active == "green"
                    assert gw.status()["policy"]["shares"] == {"green": 1.0}
                    await expect(page.locator("#cutovers tbody tr[data-cutover]")).to_have_count(1)
                    await expect(page.locator("#rollback")).to_have_text("Roll back to blue…")

                    # the traffic profile: the share of user traffic the warmups covered,
                    # cold hits per replica, the top shapes with their shares
                    await expect(page.locator("#coverage")).to_have_text(
                        re.compile(r"^\d+(\.\d)?%$"), timeout=15_000)
                    await expect(page.locator("#coverage-text")).to_contain_text(
                        "of the last 1 h's user requests")
                    shapes = page.locator("#shapes tbody tr[data-shape]")
                    await expect(shapes.first).to_contain_text("tiny")
                    assert 1 <= await shapes.count() <= 10
                    await expect(shapes.first.locator("td").first).to_have_text(
                        re.compile(r"^\d+(\.\d)?%$"))
                    hits = page.locator("#cold-hits tbody tr[data-replica]")
                    await expect(hits).to_have_count(4)
                    await expect(page.locator('#cold-hits tr[data-replica="green-1"] td').nth(1)
                                 ).to_have_text(re.compile(r"^[1-9]\d*$"))  # shapes warmed

                    # a drain through the API is seen on the page
                    assert (await admin(gw, "POST", "/replicas/blue-1/drain"))[0] == 200
                    drained = page.locator('#replicas tr[data-replica="blue-1"] .state')
                    await expect(drained).to_have_text("draining")

                    # the charts keep a line for every replica ramping or ready in the last
                    # 2 minutes (blue-1's stops at its drain)
                    await expect(page.locator("#chart-weight path.series")).to_have_count(4)
                    await page.wait_for_timeout(1500)  # a little more history in the charts
                    await page.mouse.move(0, 0)
                    SCREENSHOT.parent.mkdir(exist_ok=True)
                    shot = SCREENSHOT if os.environ.get("WARMGW_SCREENSHOT") == "1" else (
                        tmp_path / "status-page.png")
                    await page.screenshot(path=str(shot))
                    assert shot.stat().st_size > 10_000

                # the token lasts as long as the tab: a reload goes straight to the page
                await page.reload()
                await expect(rows).to_have_count(4)
                await expect(page.locator("#login-form")).to_be_hidden()
                # a token that stops working (401 on a poll) returns to the form, with why
                await page.evaluate("sessionStorage.setItem('warmgw.adminToken', 'rotated')")
                await page.reload()
                await expect(page.locator("#login-error")).to_contain_text("refused the token")
                assert await page.evaluate("sessionStorage.length") == 0
                # and "Log out" returns to the form and forgets the token
                await page.fill("#token", TOKEN)
                await page.click("#login-submit")
                await expect(rows).to_have_count(4)
                assert await page.evaluate("sessionStorage.length") == 1
                await page.click("#logout")
                await expect(page.locator("#login-form")).to_be_visible()
                assert await page.evaluate("sessionStorage.length") == 0
                assert problems == []
            finally:
                await browser.close()
    with SCREENSHOT.open("rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 800)
    print(f"\nstatus page test took {time.monotonic() - t0:.1f} s")
