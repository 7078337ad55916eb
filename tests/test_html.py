"""The HTML report.

Fast tests (always run) check lib.html on a tiny notebook: offline pages, MathJax 3 config, TOC ids,
the index table. The browser tests (``pytest --run-html``, i.e. ``make check-html``) open the built
report in headless Chromium with the network cut off and check what a reader sees:

* every page loads with no request leaving ``file://``/``data:``, no failed load, no JS error;
* on notebook pages MathJax has typeset the maths: at least one display ``mjx-container`` per
  ``$$…$$`` in the notebook's Markdown, no MathJax error, no raw ``$$`` or ``$\\cmd…$`` left in
  the rendered Markdown text;
* every ``<img>`` decoded (naturalWidth > 0); every link resolves (files exist, #anchors exist);
* a screenshot of each page goes to ``$SCREENSHOT_DIR/<page>.png`` (``make screenshots`` sets it to
  ``report/screenshots``; by default a temporary folder, so ``make test`` leaves the tree clean).

The report folder is ``$REPORT_DIR`` (default: the repository's ``report/``). Chromium is driven
through the DevTools protocol over ``--remote-debugging-pipe`` (stdlib only, no port opened).
"""
from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from lib import html as H

ROOT = Path(__file__).resolve().parent.parent
REPORT_DIR = Path(os.environ.get("REPORT_DIR", ROOT / "report")).resolve()
SCREENSHOT_DIR = os.environ.get("SCREENSHOT_DIR")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = "sudo apt-get install -y chromium   (Debian/Ubuntu), or set CHROMIUM=/path/to/chrome"
PAGE_TIMEOUT = 45.0


# --- a tiny notebook for the fast tests -------------------------------------------------------

def _png_bytes() -> bytes:
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    raw = b"".join(b"\x00" + bytes([200, 30, 30]) * 4 for _ in range(3))  # 4x3 RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (4).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00")
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


MD = r"""# The ELBO, derived

Inline $p_\theta(x) = \int p_\theta(x\mid z)\,p(z)\,dz$ and $\beta$.

## Jensen's inequality

$$
\log p_\theta(x) \ge \mathbb{E}_{q_\phi(z\mid x)}\left[\log \frac{p_\theta(x, z)}{q_\phi(z\mid x)}\right]
$$

## Jensen's inequality

$$\mathrm{KL}\big(\mathcal{N}(\mu,\sigma^2)\,\|\,\mathcal{N}(0,1)\big) = \tfrac12\sum_j(\mu_j^2+\sigma_j^2-\log\sigma_j^2-1)$$

### With $\boldsymbol{\beta}$ & more
"""


def make_report(folder: Path, name: str = "02_vae_derivation") -> Path:
    """A report folder with one executed-looking notebook, figures, a run and a manifest; exported."""
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "figures").mkdir(exist_ok=True)
    png = _png_bytes()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(MD),
        nbformat.v4.new_code_cell("print('$$ not maths $$')", execution_count=1, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="$$ not maths $$\n")]),
        nbformat.v4.new_code_cell("fig", execution_count=2, outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("Markdown(...)", execution_count=3, outputs=[nbformat.v4.new_output(
            "display_data", data={"text/markdown": "## Measured\n\nThe gap is $0.12$ nats.", "text/plain": "md"})]),
    ]
    nbformat.write(nb, str(folder / f"{name}.ipynb"))
    H.export(folder / f"{name}.ipynb", folder / f"{name}.html")
    for fig in ("curves", "iwae_gap"):
        (folder / "figures" / f"{name}_{fig}.png").write_bytes(png)
    run = folder / "runs" / "vae-bce-0"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({
        "run_id": "vae-bce-0", "notebook": name, "label": "ConvVAE, BCE", "spec": {}, "history": [],
        "metrics": {"test_bound": 105.4321, "test_iwae": 101.5, "iwae_k": 100, "fid": 3.25,
                    "class_shares": [0.1] * 10}}))
    (folder / "manifest.json").write_text(json.dumps({
        "notebooks": {name: {"profile": "smoke", "wall_seconds": 75.0, "built": "2025-01-01T00:00:00"}},
        "profile": ["smoke"], "git_commit": "0123456789abcdef", "total_wall_seconds": 75.0,
        "environment": {"device": "cpu", "cores": 2}}))
    H.write_index(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    return make_report(tmp_path_factory.mktemp("report"))


# --- fast tests: lib.html on its own ------------------------------------------------------------

def test_page_loads_nothing_from_the_network_and_configures_mathjax3(tiny_report):
    page = (tiny_report / "02_vae_derivation.html").read_text()
    srcs = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"]+)"', page)
    assert f"{H.MATHJAX_JS}" in srcs
    assert [s for s in srcs if re.match(r"(https?:)?//", s)] == [], "page must not load anything from a CDN"
    assert "MathJax.Hub" not in page, "nbconvert's MathJax 2 config must be replaced"
    head = page[:page.index("</head>")]
    assert head.index("window.MathJax") < head.index(H.MATHJAX_JS), "config must come before MathJax itself"
    assert "inlineMath: [['$', '$']" in head
    assert '<a href="index.html">' in page and '<a href="02_vae_derivation.ipynb"' in page


def test_toc_lists_headings_with_unique_clean_ids(tiny_report):
    page = (tiny_report / "02_vae_derivation.html").read_text()
    toc = page[page.index('<nav class="gm-toc"'):page.index("</nav>")]
    targets = re.findall(r'href="#([^"]+)"', toc)
    # nbconvert's ids where clean (JupyterLab makes the same, so links written there work), a slug
    # where the heading holds TeX, -2 for a repeated heading
    assert targets[:4] == ["The-ELBO,-derived", "Jensen's-inequality", "Jensen's-inequality-2",
                           "With-boldsymbol-beta-more"]
    assert "Measured" in targets, "headings of Markdown outputs are in the TOC too"
    ids = re.findall(r'\sid="([^"]*)"', page)
    assert len(ids) == len(set(ids)), "ids must be unique"
    for t in targets:
        assert H._CLEAN_ID.match(t) and t in ids


def test_add_toc_keeps_clean_nbconvert_ids_for_handwritten_links():
    page = ('<body><main><h2 id="Results">Results<a class="anchor-link" href="#Results">¶</a></h2>'
            '<h2 id="Results">Results<a class="anchor-link" href="#Results">¶</a></h2></main></body>')
    out = H.add_toc(page)
    assert '<h2 id="Results">' in out and '<h2 id="Results-2">' in out
    assert out.index('<nav class="gm-toc"') < out.index("<main>")
    assert H.add_toc("<main><p>no headings</p></main>") == "<main><p>no headings</p></main>"


def test_index_links_pages_thumbnail_and_only_present_metrics(tiny_report):
    page = (tiny_report / "index.html").read_text()
    assert 'href="02_vae_derivation.html"' in page and 'href="02_vae_derivation.ipynb"' in page
    assert '<img src="figures/02_vae_derivation_iwae_gap.png"' in page, "preferred thumbnail by name"
    assert ">105.43<" in page and ">101.50<" in page and ">3.25<" in page
    assert "SSIM" not in page and "PSNR" not in page, "columns no run has are left out"
    assert 'href="runs/vae-bce-0/metrics.json"' in page and 'href="manifest.json"' in page
    assert "1 min 15 s" in page and "0123456789ab" in page
    for href in re.findall(r'href="([^"#]+)"', page):
        assert (tiny_report / unquote(href)).is_file(), href
    assert (tiny_report / "01_vae_basic.html").exists() is False and 'href="01_vae_basic.html"' not in page


def test_pick_thumbnail_prefers_key_then_preference_then_first(tmp_path):
    names = [tmp_path / f"03_gan_{n}.png" for n in ("a_curves", "key", "samples")]
    assert H.pick_thumbnail(names, "03_gan").name == "03_gan_key.png"
    assert H.pick_thumbnail([names[0], names[2]], "03_gan").name == "03_gan_samples.png"
    assert H.pick_thumbnail([names[0]], "03_gan").name == "03_gan_a_curves.png"
    assert H.pick_thumbnail([], "03_gan") is None


def test_mathjax_bundle_is_the_pinned_file_and_is_copied(tiny_report):
    js = H.ASSETS_SRC / "mathjax" / "tex-svg-full.js"
    assert H._sha256(js) == H.MATHJAX_SHA256
    assert (H.ASSETS_SRC / "mathjax" / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert H._sha256(tiny_report / H.MATHJAX_JS) == H.MATHJAX_SHA256


# --- headless Chromium over the DevTools protocol (pipe transport) ---------------------------------

# Runs in a fresh interpreter between fork and exec: puts the two pipe ends on fds 3 and 4, where
# --remote-debugging-pipe expects them, without clobbering anything, then becomes Chromium.
_LAUNCHER = r"""
import fcntl, os, sys
a, b = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])
os.dup2(a, 3); os.dup2(b, 4); os.close(a); os.close(b)
os.execv(sys.argv[3], sys.argv[3:])
"""


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Chromium:
    """Headless Chromium with networking cut off, driven by CDP messages over a pipe."""

    def __init__(self, exe: str):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_r, self._w = os.pipe()       # we write commands -> Chromium reads fd 3
        self._r, from_w = os.pipe()     # Chromium writes fd 4 -> we read
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--no-first-run",
                "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                # every non-file request goes to a dead proxy, loopback included: nothing leaves the machine
                "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "about:blank"]
        self.log = open(Path(self.profile) / "chromium.log", "w+b")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(to_r), str(from_w), *args],
                                     pass_fds=(to_r, from_w), stdout=self.log, stderr=subprocess.STDOUT)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.call("Browser.getVersion", timeout=30)

    def _send(self, msg: dict) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}): {err}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: str | None = None, timeout: float = PAGE_TIMEOUT, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str, timeout: float = PAGE_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.events[seen:]:
                if m.get("method") == method and m.get("sessionId") == session:
                    return m
            seen = len(self.events)
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it may close the pipe before answering
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# Runs in the page once it has loaded: waits for MathJax's first typeset and for every image.
_INSPECT = r"""(async () => {
  const mj = window.MathJax;
  let mathjax = 'not loaded';
  if (mj && mj.startup && mj.startup.promise) { await mj.startup.promise; mathjax = 'typeset'; }
  await Promise.all(Array.from(document.images).map(i => i.complete ? 0 :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const q = s => Array.from(document.querySelectorAll(s));
  return {
    mathjax, version: mj && mj.version,
    containers: q('mjx-container').length,
    display: q('mjx-container[display="true"]').length,
    errors: q('mjx-merror, [data-mjx-error]').map(e => e.getAttribute('data-mjx-error') || e.textContent),
    // MathJax's noundefined extension shows an unknown macro as red text instead of an error
    undefined_macros: (mj && mj.startup && mj.startup.document && mj.startup.toMML)
      ? Array.from(mj.startup.document.math).flatMap(m =>
          mj.startup.toMML(m.root).match(/<mtext[^>]*mathcolor="red"[^>]*>\\[^<]*/g) || []) : [],
    markdown_text: q('.jp-RenderedMarkdown').map(e => e.innerText).join('\n'),
    images: q('img').map(i => ({src: (i.getAttribute('src') || '').slice(0, 80), w: i.naturalWidth, h: i.naturalHeight})),
    links: q('a[href]').map(a => a.href),
    ids: q('[id]').map(e => e.id),
    toc: q('nav.gm-toc a').length,
    height: document.documentElement.scrollHeight,
  };
})()"""


def inspect_page(browser: Chromium, path: Path, screenshot: Path) -> dict:
    """Load ``path`` in a fresh tab; return what _INSPECT saw plus the requests and errors, save a screenshot."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    sid = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        for domain in ("Page", "Network", "Runtime"):
            browser.call(f"{domain}.enable", session=sid)
        browser.call("Emulation.setDeviceMetricsOverride", session=sid, width=1280, height=900,
                     deviceScaleFactor=1, mobile=False)
        start = len(browser.events)
        browser.call("Page.navigate", session=sid, url=path.as_uri())
        browser.wait_event("Page.loadEventFired", sid)
        res = browser.call("Runtime.evaluate", session=sid, expression=_INSPECT, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"inspection script failed: {res['exceptionDetails']}")
        info = res["result"]["value"]
        shot = browser.call("Page.captureScreenshot", session=sid, format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": 1280, "height": min(info["height"], 2400), "scale": 1})
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        mine = [m for m in browser.events[start:] if m.get("sessionId") == sid]
        info["requests"] = [m["params"]["request"]["url"] for m in mine if m.get("method") == "Network.requestWillBeSent"]
        info["failed"] = [(m["params"].get("errorText"), m["params"].get("requestId")) for m in mine
                          if m.get("method") == "Network.loadingFailed"]
        info["js_errors"] = [m["params"]["exceptionDetails"].get("exception", {}).get("description")
                             or m["params"]["exceptionDetails"].get("text")
                             for m in mine if m.get("method") == "Runtime.exceptionThrown"]
        return info
    finally:
        try:
            browser.call("Target.closeTarget", targetId=target, timeout=10)
        except (RuntimeError, TimeoutError):
            pass  # keep the original failure


@pytest.fixture(scope="module")
def browser(request):
    if not request.config.getoption("--run-html"):
        pytest.skip("browser check: run with --run-html (make check-html)")
    exe = find_chromium()
    if not exe:
        pytest.fail(f"--run-html needs headless Chromium, found none of {CHROMIUM_NAMES} on PATH; {INSTALL_HINT}")
    b = Chromium(exe)
    yield b
    b.close()


def _pages(report: Path) -> list[str]:
    return ["index", *(nb for nb in H.NOTEBOOKS if (report / f"{nb}.html").exists())]


def _expected_display_math(ipynb: Path) -> int:
    """Number of $$…$$ blocks in the notebook's Markdown cells (code fences and spans removed)."""
    n = 0
    for cell in json.loads(ipynb.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            src = re.sub(r"```.*?```|`[^`\n]*`", "", src, flags=re.S)
            n += src.count("$$") // 2
    return n


RAW_INLINE_TEX = re.compile(r"\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")


def check_page(browser: Chromium, report: Path, page: str, shots: Path) -> dict:
    path = report / f"{page}.html"
    assert path.is_file(), f"{path} is missing; build the report first (make report)"
    info = inspect_page(browser, path, shots / f"{page}.png")
    where = f"{path.name}:"
    # self-contained, and it loaded cleanly
    outside = [u for u in info["requests"] if urlsplit(u).scheme not in ("file", "data", "blob", "about")]
    assert outside == [], f"{where} requests outside the report: {outside}"
    assert info["failed"] == [], f"{where} failed loads: {info['failed']}"
    assert info["js_errors"] == [], f"{where} JavaScript errors: {info['js_errors']}"
    # every image decoded
    assert [i for i in info["images"] if i["w"] <= 0 or i["h"] <= 0] == [], f"{where} images that did not load"
    # every link resolves
    ids = set(info["ids"])
    for href in info["links"]:
        u = urlsplit(href)
        if u.scheme in ("http", "https", "mailto") and page != "index":
            continue  # a citation in a notebook's prose; not checked offline
        assert u.scheme == "file", f"{where} link {href} leaves the report"
        target = Path(unquote(u.path))
        assert target.is_file(), f"{where} link {href} points to a missing file"
        if u.fragment and target.resolve() == path.resolve():
            assert unquote(u.fragment) in ids, f"{where} link {href} points to a missing anchor"
    # maths typeset
    if page != "index":
        expected = _expected_display_math(report / f"{page}.ipynb")
        if expected or "$" in info["markdown_text"]:
            assert info["mathjax"] == "typeset", f"{where} MathJax did not run ({info['mathjax']})"
        assert info["errors"] == [], f"{where} MathJax errors: {info['errors']}"
        assert info["undefined_macros"] == [], f"{where} undefined TeX macros: {info['undefined_macros']}"
        assert info["display"] >= expected, (f"{where} {info['display']} display equations typeset, "
                                             f"the notebook has {expected} $$…$$ blocks")
        text = info["markdown_text"]
        assert "$$" not in text, f"{where} raw $$ left in the rendered text: …{text[text.find('$$') - 80:][:200]}…"
        raw = RAW_INLINE_TEX.findall(text)
        assert raw == [], f"{where} raw inline TeX left in the rendered text: {raw[:5]}"
        assert info["toc"] > 0, f"{where} no table of contents"
    assert (shots / f"{page}.png").stat().st_size > 5_000
    return info


def test_report_pages_in_headless_chromium(browser, tmp_path):
    """index.html and every notebook page of $REPORT_DIR (02_vae_derivation required)."""
    report = REPORT_DIR
    shots = Path(SCREENSHOT_DIR).resolve() if SCREENSHOT_DIR else tmp_path / "screenshots"
    assert (report / "index.html").is_file(), f"{report}/index.html is missing; build the report first (make report)"
    assert (report / "02_vae_derivation.html").is_file(), f"{report}/02_vae_derivation.html is missing"
    seen = {page: check_page(browser, report, page, shots) for page in _pages(report)}
    assert seen["02_vae_derivation"]["display"] > 0, "the derivation page has no display maths"
    for nb in H.NOTEBOOKS:
        if (report / f"{nb}.html").exists():
            assert (report / f"{nb}.html").as_uri() in seen["index"]["links"], f"index does not link {nb}.html"


def test_check_fails_when_maths_is_not_typeset(browser, tmp_path):
    """The page check must catch maths that is not typeset: break a good page three ways."""
    report = make_report(tmp_path / "report")
    info = check_page(browser, report, "02_vae_derivation", tmp_path / "shots")
    assert info["display"] == 2 and info["containers"] >= 6  # 2 display, inline in text, heading, TOC, output
    page = (report / "02_vae_derivation.html").read_text()
    broken = {
        "no_inline": (page.replace("inlineMath: [['$', '$'], ", "inlineMath: ["), "raw inline TeX"),
        "unknown_macro": (page.replace(r"and $\beta$", r"and $\notamacro$"), "undefined TeX macros"),
    }
    for name, (text, expected) in broken.items():
        assert text != page
        (report / f"{name}.html").write_text(text)
        shutil.copy(report / "02_vae_derivation.ipynb", report / f"{name}.ipynb")
        with pytest.raises(AssertionError, match=expected):
            check_page(browser, report, name, tmp_path / "shots")
    (report / H.MATHJAX_JS).unlink()
    with pytest.raises(AssertionError, match="failed loads|MathJax did not run"):
        check_page(browser, report, "02_vae_derivation", tmp_path / "shots")
