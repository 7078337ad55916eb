"""The HTML report.

Fast tests (always run) check builder.html on a tiny notebook: offline pages, MathJax 3 config, TOC ids,
the index table. The browser tests (``pytest --run-html``, i.e. ``make check-html``) open the built
report in headless Chromium with the network cut off and check what a reader sees:

* every page loads with no request leaving ``file://``/``data:`` (Playwright's routing aborts and
  records any other request; its events record every request, failed load and JS error), no failed
  load, no JS error;
* on notebook pages MathJax has typeset the maths: at least one display ``mjx-container`` per
  ``$$…$$`` in the notebook's Markdown, each drawn as MathJax's SVG, no MathJax error or undefined
  macro, no raw ``$$``, ``$\\cmd…$``, ``\\(…\\)`` or ``\\[…\\]`` left in the rendered Markdown text;
* every ``<img>`` decoded (naturalWidth > 0); every link resolves (files exist, #anchors exist);
* a screenshot of each page goes to ``$SCREENSHOT_DIR/<page>.png`` (``make screenshots`` sets it to
  ``report/screenshots``; by default a temporary folder, so ``make test`` leaves the tree clean).

The report folder is ``$REPORT_DIR`` (default: the repository's ``report/``). Chromium is driven by
Playwright for Python (a pinned dev extra) with the system's ``chromium`` as ``executable_path``:
``playwright install`` is never needed, and nothing is downloaded.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import pytest

from builder import html as H

if TYPE_CHECKING:
    from playwright.sync_api import Browser

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


# --- fast tests: builder.html on its own ------------------------------------------------------------

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


# --- headless Chromium, driven by Playwright ------------------------------------------------------

# Playwright drives the system's Chromium (executable_path): no browser is downloaded, and it runs
# offline and as root. The proxy flags send any request Playwright did not see to a dead port, so
# nothing can leave the machine even then (loopback included).
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--no-default-browser-check", "--disable-quic", "--disable-extensions",
                 "--mute-audio", "--hide-scrollbars",
                 "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")
LOCAL_SCHEMES = ("file", "data", "blob", "about")
VIEWPORT = {"width": 1280, "height": 900}


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


# Runs in the page once it has loaded: waits (at most ``ms`` each) for MathJax's first typeset and
# for every image, then reports what a reader sees.
_INSPECT = r"""async (ms) => {
  const within = (p, done) => Promise.race([p.then(() => done),
                                            new Promise(r => setTimeout(() => r('timed out'), ms))]);
  const mj = window.MathJax;
  let mathjax = 'not loaded';
  if (mj && mj.startup && mj.startup.promise) mathjax = await within(mj.startup.promise, 'typeset');
  const images_settled = await within(Promise.all(Array.from(document.images).map(i => i.complete ? 0 :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); }))), 'settled');
  const q = s => Array.from(document.querySelectorAll(s));
  return {
    mathjax, version: mj && mj.version, images_settled,
    containers: q('mjx-container').length,
    display: q('mjx-container[display="true"]').length,
    // tex-svg-full.js draws each formula as an <svg> inside its mjx-container
    svg: q('mjx-container > svg').length,
    no_svg: q('mjx-container').filter(c => !c.querySelector(':scope > svg')).length,
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
}"""


def inspect_page(browser: Browser, path: Path, screenshot: Path) -> dict:
    """Load ``path`` in a fresh context; return what _INSPECT saw plus the requests and errors, save a screenshot."""
    from playwright.sync_api import Error as PlaywrightError

    ms = int(PAGE_TIMEOUT * 1000)
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, service_workers="block")
    requests: list[str] = []   # every request the page (or a worker of it) made
    blocked: list[str] = []    # the non-local ones, aborted before they were sent
    failed: list[tuple[str, str]] = []
    js_errors: list[str] = []

    def guard(route):
        url = route.request.url
        if urlsplit(url).scheme in LOCAL_SCHEMES:
            route.continue_()
        else:
            blocked.append(url)
            route.abort("blockedbyclient")

    try:
        context.route(lambda url: True, guard)  # every URL, whatever its scheme
        context.on("request", lambda r: requests.append(r.url))
        context.on("requestfailed", lambda r: failed.append((r.failure or "?", r.url)))
        context.on("weberror", lambda e: js_errors.append(str(e.error)))
        page = context.new_page()
        page.on("websocket", lambda ws: blocked.append(ws.url))
        page.goto(path.as_uri(), wait_until="load", timeout=ms)
        try:
            info = page.evaluate(_INSPECT, ms)
        except PlaywrightError as e:
            raise AssertionError(f"inspection script failed: {e}") from None
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True, timeout=ms,
                        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": min(info["height"], 2400)})
        info.update(requests=list(dict.fromkeys(requests + blocked)), blocked=blocked, failed=failed,
                    js_errors=js_errors)
        return info
    finally:
        try:
            context.close()
        except PlaywrightError:
            pass  # keep the original failure


@pytest.fixture(scope="module")
def browser(request):
    if not request.config.getoption("--run-html"):
        pytest.skip("browser check: run with --run-html (make check-html)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("--run-html needs Playwright for Python (a dev extra): pip install -c constraints.txt -e '.[dev]'")
    exe = find_chromium()
    if not exe:
        pytest.fail(f"--run-html needs headless Chromium, found none of {CHROMIUM_NAMES} on PATH; {INSTALL_HINT}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=list(CHROMIUM_ARGS), timeout=30_000)
        try:
            yield b
        finally:
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
RAW_DELIMITED_TEX = re.compile(r"\\\(.*?\\\)|\\\[.*?\\\]", re.S)   # \(…\) and \[…\] left as text


def check_page(browser: Browser, report: Path, page: str, shots: Path) -> dict:
    path = report / f"{page}.html"
    assert path.is_file(), f"{path} is missing; build the report first (make report)"
    info = inspect_page(browser, path, shots / f"{page}.png")
    where = f"{path.name}:"
    # self-contained, and it loaded cleanly
    outside = [u for u in info["requests"] if urlsplit(u).scheme not in LOCAL_SCHEMES]
    assert outside == [], f"{where} requests outside the report: {outside}"
    assert info["failed"] == [], f"{where} failed loads: {info['failed']}"
    assert info["js_errors"] == [], f"{where} JavaScript errors: {info['js_errors']}"
    # every image decoded
    assert info["images_settled"] == "settled", f"{where} images still loading after {PAGE_TIMEOUT:.0f} s"
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
        assert info["no_svg"] == 0, f"{where} {info['no_svg']} mjx-container(s) without MathJax's SVG output"
        if expected:
            assert info["svg"] >= expected, f"{where} {info['svg']} SVG formulas, expected at least {expected}"
        text = info["markdown_text"]
        assert "$$" not in text, f"{where} raw $$ left in the rendered text: …{text[text.find('$$') - 80:][:200]}…"
        raw = RAW_INLINE_TEX.findall(text)
        assert raw == [], f"{where} raw inline TeX left in the rendered text: {raw[:5]}"
        raw = RAW_DELIMITED_TEX.findall(text)
        assert raw == [], f"{where} raw delimited TeX left in the rendered text: {raw[:5]}"
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
    """The page check must catch maths that is not typeset (and a network request): break a good page five ways."""
    report = make_report(tmp_path / "report")
    for neighbour in ("01_vae_basic", "03_gan"):  # the page's prev / next links
        (report / f"{neighbour}.html").write_text("<!doctype html><title>stub</title>")
    info = check_page(browser, report, "02_vae_derivation", tmp_path / "shots")
    assert info["display"] == 2 and info["containers"] >= 6  # 2 display, inline in text, heading, TOC, output
    assert info["svg"] == info["containers"] and info["no_svg"] == 0
    assert info["requests"] and all(u.startswith("file://") for u in info["requests"]), info["requests"]
    page = (report / "02_vae_derivation.html").read_text()
    broken = {
        "no_inline": (page.replace("inlineMath: [['$', '$'], ", "inlineMath: ["), "raw inline TeX"),
        "unknown_macro": (page.replace(r"and $\beta$", r"and $\notamacro$"), "undefined TeX macros"),
        "no_paren": (page.replace(r", ['\\(', '\\)']]", "]").replace("The gap is $0.12$ nats.",
                                                                         r"The gap is \(0.12\) nats."),
                     "raw delimited TeX"),
        "network": (page.replace("</body>", '<img src="https://cdn.example.invalid/x.png" alt=""></body>', 1),
                    r"requests outside the report: \['https://cdn\.example\.invalid/x\.png'\]"),
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


def test_index_shows_mean_and_sd_of_a_model_trained_with_several_seeds(tmp_path):
    report = make_report(tmp_path / "report")
    for seed, bound in ((1, 107.4321), (2, 103.4321)):
        run = report / "runs" / f"vae-bce-s{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({
            "run_id": f"vae-bce-s{seed}", "notebook": "02_vae_derivation", "label": "ConvVAE, BCE", "seed": seed,
            "spec": {}, "history": [], "metrics": {"test_bound": bound, "fid": 3.25}}))
    H.write_index(report)
    page = (report / "index.html").read_text()
    assert ">105.43 ± 2.00<" in page, "mean ± SD over the three seeds"
    assert "3 seeds:" in page and page.count('href="runs/vae-bce-s') == 2


def test_findings_table_box_hidden_cells_and_prev_next(tmp_path):
    """The index opens with the findings (report/verdicts.json, merged from each notebook's verdicts file);
    a page opens with its tier's findings, links its neighbours and hides papermill's and Lab-only cells."""
    import nbformat

    folder = tmp_path / "r"
    (folder / "verdicts").mkdir(parents=True)
    sub = {"claim": "c", "claim_text": "GAN samples are clearer", "id": "c1", "text": "GAN closer to real digits",
           "metric": "fid", "label": "kept", "deciding": "GAN 30.0 vs VAE 180.0", "anchor": "verdict-c1", "note": ""}
    (folder / "verdicts" / "03_gan.json").write_text(json.dumps({"notebook": "03_gan", "profile": "smoke",
                                                                  "subclaims": [sub]}))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("# Parameters\nepochs = 3", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("explorer_only_in_lab()", metadata={"tags": ["lab-only"]}),
                nbformat.v4.new_code_cell("shown_cell()")]
    nbformat.write(nb, str(folder / "03_gan.ipynb"))
    H.export(folder / "03_gan.ipynb", folder / "03_gan.html")
    page = (folder / "03_gan.html").read_text()
    assert "shown_cell" in page and "explorer_only_in_lab" not in page and "epochs = 3" not in page
    assert "What this tier finds" in page and 'href="#verdict-c1"' in page
    assert 'href="02_vae_derivation.html"' in page and 'href="04_beta_vae.html"' in page
    merged = json.loads(H.merge_verdicts(folder).read_text())
    assert [s["id"] for s in merged["subclaims"]] == ["c1"] and merged["subclaims"][0]["notebook"] == "03_gan"
    H.write_index(folder)
    index = (folder / "index.html").read_text()
    assert index.index("Findings") < index.index("Tiers")
    assert 'href="03_gan.html#verdict-c1"' in index and "GAN 30.0 vs VAE 180.0" in index and "✓ kept" in index


@pytest.mark.parametrize("models, text", [
    (None, ""), ({"recorded": 0, "trained": 0}, ""),
    ({"recorded": 36, "trained": 36}, "every one of its 36 models trained in it"),
    ({"recorded": 36, "trained": 0}, "its 36 models all loaded from the model cache, trained earlier"),
    ({"recorded": 36, "trained": 1}, "1 of its 36 models trained in it, 35 loaded from the model cache"),
])
def test_the_index_says_how_many_models_its_build_trained(tmp_path, models, text):
    """A build that loads its models from the cache takes minutes: its header must not read as the training time."""
    manifest = {"this_build_wall_seconds": 722.0} | ({"this_build_models": models} if models else {})
    assert H.trained_text(manifest) == text
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    H.write_index(tmp_path)
    header = re.search(r"built in [^<]*", (tmp_path / "index.html").read_text()).group(0)
    assert header == "built in 12 min 02 s" + (f" ({text})" if text else "")
