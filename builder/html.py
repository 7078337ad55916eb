"""HTML for the report: each executed notebook as a page, and report/index.html.

Everything works offline and from ``file://``:

* mathematics is typeset by the MathJax 3 bundled in ``report/assets/mathjax/`` (no CDN); the
  pages load it by the relative path :data:`MATHJAX_JS` after a MathJax 3 config that turns on
  ``$…$`` inline math (nbconvert's own config block is MathJax 2 syntax, which MathJax 3 ignores);
* nbconvert's CDN scripts (require.js, mermaid) are left out — the notebooks need neither;
* every notebook page gets a table of contents built from its Markdown headings (h1–h3), with
  clean, unique anchor ids, and a bar linking back to the index and to the executed ``.ipynb``.

``write_index(report)`` also puts the MathJax bundle into ``report/assets/`` when the report
folder is not the repository's own ``report/`` (e.g. ``--report-dir /tmp/rep``).
"""
from __future__ import annotations

import hashlib
import html as _html
import json
import re
import shutil
from pathlib import Path
from typing import Any

from harness.config import NOTEBOOKS, ROOT

TITLES = {
    "01_vae_basic": "Basic: convolutional VAE with BCE, MSE and L1 reconstruction",
    "02_vae_derivation": "Intermediate: the ELBO derivation, checked numerically",
    "03_gan": "Advanced: the MLP GAN",
    "04_beta_vae": "Advanced: β-VAE, β ∈ {1, 2, 3, 4}",
    "05_noisy_data": "Advanced: VAE trained on salt-and-pepper data",
}
TIERS = {"01_vae_basic": "basic", "02_vae_derivation": "intermediate", "03_gan": "advanced",
         "04_beta_vae": "advanced", "05_noisy_data": "advanced"}

# --- MathJax, bundled ------------------------------------------------------------------------

ASSETS_SRC = ROOT / "report" / "assets"          # the committed copy (npm mathjax@3.2.2)
MATHJAX_JS = "assets/mathjax/tex-svg-full.js"    # relative to the report folder
MATHJAX_SHA256 = "a4354ff94fd868aea0cc6eaaa79a57fda0588646fc46ee3700a349ee0a11cbe6"
MATHJAX_FILES = ("tex-svg-full.js", "LICENSE", "README.md")

# MathJax 3 config: $…$ and \(…\) inline, $$…$$ and \[…\] display; code (<pre>/<code>) is skipped
# by MathJax's default skipHtmlTags, so dollar signs in Python source and printed output stay text.
# \bm (LaTeX's bm package, common in ML notation) is mapped to \boldsymbol.
MATHJAX_CONFIG = r"""<script>
window.MathJax = {
  tex: {
    inlineMath: [['$', '$'], ['\\(', '\\)']],
    displayMath: [['$$', '$$'], ['\\[', '\\]']],
    processEscapes: true,
    processEnvironments: true,
    tags: 'ams',
    macros: {bm: ['\\boldsymbol{#1}', 1]}
  },
  svg: {fontCache: 'global'},
  options: {ignoreHtmlClass: 'tex2jax_ignore', processHtmlClass: 'tex2jax_process'}
};
</script>"""


def mathjax_head(prefix: str = "") -> str:
    """The <script> tags that load the bundled MathJax (``prefix``: path from the page to report/)."""
    return f'{MATHJAX_CONFIG}\n<script defer id="MathJax-script" src="{prefix}{MATHJAX_JS}"></script>'


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def install_assets(report: Path) -> Path:
    """Make sure ``report/assets/mathjax/`` holds the verified MathJax bundle; return its path."""
    dest = Path(report) / "assets" / "mathjax"
    src = ASSETS_SRC / "mathjax"
    js = src / "tex-svg-full.js"
    if not js.exists() or _sha256(js) != MATHJAX_SHA256:
        raise FileNotFoundError(
            f"{js} is missing or not the MathJax 3.2.2 bundle (sha256 {MATHJAX_SHA256}); restore it with "
            "`git checkout -- report/assets` or fetch it again as report/assets/mathjax/README.md describes")
    if dest.resolve() != src.resolve():
        dest.mkdir(parents=True, exist_ok=True)
        for name in MATHJAX_FILES:
            if (src / name).exists() and (not (dest / name).exists() or _sha256(dest / name) != _sha256(src / name)):
                shutil.copy2(src / name, dest / name)
    return dest


# --- one notebook -> one page ----------------------------------------------------------------

# cells the pages leave out: papermill's injected parameters (the manifest lists them) and widgets that only
# work in a live JupyterLab kernel, and the install cell for Colab
HIDDEN_TAGS = {"injected-parameters", "lab-only", "install"}
MARKS = {"kept": "✓", "refuted": "✗", "inconclusive": "?", "holds by construction": "⚙", "untestable as stated": "∅"}


def findings_box(path: Path) -> str:
    """'What this tier finds': one line per sub-claim of the notebook's verdicts file, linked to its cell."""
    if not path.exists():
        return ""
    doc = json.loads(path.read_text())
    items = "".join(f'<li>{MARKS.get(f["label"], "")} <b>{_e(f["label"])}</b> — <a href="#{_e(f["anchor"])}">'
                    f'({_e(f["id"])}) {_e(f["text"])}</a></li>' for f in doc.get("subclaims", []))
    return (f'<aside class="gm-finds"><b>What this tier finds</b> (the course report\'s claims, one line per '
            f'sub-claim; the rule is in <code>lib/claims.py</code>)<ul>{items}</ul></aside>\n') if items else ""


PAGE_CSS = """
:root { --gm-accent: #1f5fa8; --gm-border: #d7dce3; --gm-toc-w: 17rem; }
.gm-bar { position: sticky; top: 0; z-index: 20; display: flex; gap: 1.25rem; align-items: baseline;
  padding: .55rem 1.25rem; background: #f7f9fc; border-bottom: 1px solid var(--gm-border);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
.gm-bar a { color: var(--gm-accent); text-decoration: none; }
.gm-bar a:hover { text-decoration: underline; }
.gm-bar .gm-title { font-weight: 600; color: #222; flex: 1; }
.gm-toc { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  border: 1px solid var(--gm-border); border-radius: 6px; background: #fbfcfe;
  margin: 1rem auto; padding: .4rem 1rem; max-width: 1100px; }
.gm-toc summary { font-weight: 600; cursor: pointer; padding: .2rem 0; }
.gm-toc ol { list-style: none; margin: .3rem 0; padding: 0; }
.gm-toc li { margin: .15rem 0; }
.gm-toc li.gm-l2 { padding-left: 1rem; }
.gm-toc li.gm-l3 { padding-left: 2rem; font-size: 13px; }
.gm-toc a { color: #234; text-decoration: none; }
.gm-toc a:hover { color: var(--gm-accent); text-decoration: underline; }
@media (min-width: 1280px) {
  .gm-toc { position: fixed; top: 2.6rem; left: 0; bottom: 0; width: var(--gm-toc-w); margin: 0;
    overflow-y: auto; border-radius: 0; border-width: 0 1px 0 0; padding: .6rem 1rem; }
  body.jp-Notebook > main { margin-left: calc(var(--gm-toc-w) + 1rem); }
}
.jp-RenderedMarkdown :is(h1, h2, h3, h4) { scroll-margin-top: 3rem; }
.jp-RenderedMarkdown :is(h1, h2, h3, h4):hover > a.anchor-link { display: inline; margin-left: .3em;
  color: #999; text-decoration: none; }
mjx-container[display="true"] { overflow-x: auto; overflow-y: hidden; max-width: 100%; }
.gm-finds { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px;
  margin: 1rem auto; padding: .5rem 1rem; border: 1px solid var(--gm-border); border-left: 4px solid var(--gm-accent);
  border-radius: 6px; background: #fbfcfe; }
.gm-finds ul { margin: .3rem 0; padding-left: 1.2rem; }
.gm-finds a { color: #234; }
@media (min-width: 1280px) { .gm-finds { margin-left: calc(var(--gm-toc-w) + 1rem); } }
"""

# Overrides nbconvert's lab template: our MathJax instead of its CDN MathJax 2, no CDN require.js
# or mermaid, our CSS. The template name is looked up before the lab folder's own files.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{{ resources.genmnist_mathjax }}
{%- endblock html_head_js_mathjax -%}
{% block extra_css %}<style type="text/css">{{ resources.genmnist_css }}</style>{% endblock extra_css %}
"""

_HEADING = re.compile(r'<h([1-6]) id="([^"]*)">(.*?)<a class="anchor-link" href="#[^"]*">¶</a></h\1>', re.S)
_NESTED_A = re.compile(r"</?a\b[^>]*>")  # links inside a heading cannot nest in the TOC link
# nbconvert's (and JupyterLab's) id is the heading text with spaces as "-"; keep it unless it carries
# characters that are awkward in a URL fragment or leftovers of TeX/HTML.
_CLEAN_ID = re.compile(r"""^[^\s"<>&\\$#%{}^`|]+$""")


def _slug(inner_html: str) -> str:
    text = _html.unescape(re.sub(r"<[^>]+>", "", inner_html))
    slug = re.sub(r"[^\w.()']+", "-", text, flags=re.A).strip("-")
    return slug or "section"


def add_toc(page: str, max_level: int = 3) -> str:
    """Give every Markdown heading a clean unique id and put a table of contents after <main>.

    nbconvert makes ids from the raw heading text ("Title-$x$"; repeated headings share one id).
    Its id is kept when it is clean (so links written in JupyterLab, ``[..](#2.-The-ELBO)``, keep
    working); one with TeX or HTML leftovers is replaced by a slug; repeats get -2, -3, ..."""
    used = set(re.findall(r'\sid="([^"]*)"', page))
    seen: set[str] = set()
    entries: list[tuple[int, str, str]] = []

    def fix(m: re.Match) -> str:
        level, old, inner = int(m.group(1)), _html.unescape(m.group(2)), m.group(3)
        base = old if _CLEAN_ID.match(old) else _slug(inner)
        new, n = base, 1
        while new in seen or (new != old and new in used):
            n += 1
            new = f"{base}-{n}"
        seen.add(new)
        if level <= max_level:
            entries.append((level, new, inner))
        return (f'<h{level} id="{new}">{inner}<a class="anchor-link" href="#{new}">¶</a></h{level}>')

    page = _HEADING.sub(fix, page)
    if not entries:
        return page
    top = min(lvl for lvl, _, _ in entries)
    items = "\n".join(f'<li class="gm-l{lvl - top + 1}"><a href="#{hid}">{_NESTED_A.sub("", inner)}</a></li>'
                      for lvl, hid, inner in entries)
    toc = (f'<nav class="gm-toc" aria-label="Contents"><details open><summary>Contents</summary>'
           f'<ol>\n{items}\n</ol></details></nav>\n')
    return page.replace("<main>", toc + "<main>", 1)


def export(ipynb: Path, out_html: Path) -> None:
    """Executed notebook -> standalone HTML page (written next to, and linking to, the .ipynb).

    The page loads MathJax from ``assets/`` next to it; :func:`write_index` installs that folder."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    ipynb, out_html = Path(ipynb), Path(out_html)
    name = out_html.stem
    title = TITLES.get(name, name)
    nb = nbformat.read(str(ipynb), as_version=4)
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"genmnist.html.j2": _TEMPLATE})],
                            template_file="genmnist.html.j2")
    resources = {"metadata": {"name": title}, "genmnist_mathjax": mathjax_head(), "genmnist_css": PAGE_CSS}
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags=HIDDEN_TAGS), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    order = list(TITLES)
    i = order.index(name) if name in order else -1
    prev = f'<a href="{order[i - 1]}.html">← {order[i - 1]}</a>' if i > 0 else ""
    nxt = f'<a href="{order[i + 1]}.html">{order[i + 1]} →</a>' if 0 <= i < len(order) - 1 else ""
    bar = (f'<header class="gm-bar"><a href="index.html">Report index</a>{prev}'
           f'<span class="gm-title">{_html.escape(title)}</span>{nxt}'
           f'<a href="{_html.escape(ipynb.name)}" download>executed notebook (.ipynb)</a></header>\n')
    box = findings_box(ipynb.parent / "verdicts" / f"{name}.json")
    body = re.sub(r"(<body\b[^>]*>)", lambda m: m.group(1) + "\n" + bar + box, body, count=1)
    out_html.write_text(add_toc(body), encoding="utf-8")


# --- report/index.html -----------------------------------------------------------------------

# (metrics.json key, header, tooltip, format). Columns no run has are left out.
METRIC_COLUMNS: list[tuple[str, str, str, str]] = [
    ("test_bound", "−ELBO", "negative ELBO on the test set, nats per image (sum over 784 pixels, mean over "
     "the test images); lower is better", "{:.2f}"),
    ("test_recon", "recon.", "reconstruction term of the test bound, nats per image", "{:.2f}"),
    ("test_kl", "KL", "KL(q(z|x) ‖ p(z)) term of the test bound, nats per image", "{:.2f}"),
    ("test_iwae", "IWAE bound", "importance-weighted bound −log p̂(x) with k samples, nats per image "
     "(tighter than −ELBO; lower is better)", "{:.2f}"),
    ("fid", "classifier-FID", "Fréchet distance between Gaussians fitted to the project's MNIST classifier's "
     "features of samples vs test images (not Inception FID; 10,000 samples in the default profile); lower is "
     "better", "{:.2f}"),
    ("fid_inverted", "FID, noise undone", "noisy-data models: classifier-FID of the samples after inverting the "
     "noise channel, (x − a/2) / (1 − a), against the clean test images; lower is better", "{:.2f}"),
    ("min_class_share", "min class share", "smallest share of any digit among the samples, by the "
     "classifier (0.100 = all ten equally)", "{:.3f}"),
    ("class_entropy", "class entropy", "entropy of the predicted-class histogram of the samples, nats "
     "(ln 10 ≈ 2.303 = uniform)", "{:.3f}"),
    ("recognisability", "recognisability", "mean max class probability the classifier gives a sample", "{:.3f}"),
    ("psnr", "PSNR (dB)", "PSNR of reconstructions against the clean test images, from the MSE pooled over "
     "images", "{:.2f}"),
    ("ssim", "SSIM", "SSIM of reconstructions against the clean test images", "{:.3f}"),
    ("gradient_energy", "gradient energy", "mean squared pixel gradient of the samples", "{:.4f}"),
    ("sharpness_gap", "sharpness gap", "|gradient energy − the test digits'|: distance of the samples' edge "
     "energy from real digits' (lower is sharper in the report's sense)", "{:.4f}"),
]

# Thumbnail per tier: the first figure whose name (after "<nb>_") contains one of these, in this
# order; otherwise the notebook's first figure by name. A figure saved as "<nb>_key.png" always wins.
THUMBNAIL_PREFERENCE = {
    "01_vae_basic": ["comparison", "samples", "grid"],
    "02_vae_derivation": ["iwae", "bound", "kl"],
    "03_gan": ["samples", "comparison", "grid"],
    "04_beta_vae": ["traversal", "rate", "samples"],
    "05_noisy_data": ["denois", "reconstruction", "comparison", "samples"],
}

INDEX_CSS = """
:root { --accent: #1f5fa8; --border: #d7dce3; --muted: #5b6573; --bg: #f7f9fc; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
  color: #1d232b; background: #fff; }
header.top { background: var(--bg); border-bottom: 1px solid var(--border); padding: 1.4rem 0 1rem; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 1.5rem; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .8rem; padding-bottom: .3rem; border-bottom: 1px solid var(--border); }
.sub { color: var(--muted); margin: 0; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.tiers { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1rem; }
.card { border: 1px solid var(--border); border-radius: 8px; padding: .9rem 1rem; display: flex;
  flex-direction: column; gap: .5rem; background: #fff; }
.card.missing { background: var(--bg); color: var(--muted); }
.card .tier { text-transform: uppercase; letter-spacing: .06em; font-size: .72rem; color: var(--muted); }
.card h3 { margin: 0; font-size: 1.02rem; }
.card .thumb { display: block; border: 1px solid var(--border); border-radius: 4px; background: #fff;
  height: 200px; overflow: hidden; text-align: center; }
.card .thumb img { max-width: 100%; max-height: 198px; object-fit: contain; }
.card .links { display: flex; gap: 1rem; flex-wrap: wrap; font-size: .92rem; }
.card .meta { font-size: .82rem; color: var(--muted); }
details.figs summary { cursor: pointer; font-size: .88rem; color: var(--muted); }
details.figs .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); gap: .4rem;
  margin-top: .4rem; }
details.figs .grid img { width: 100%; height: 80px; object-fit: contain; border: 1px solid var(--border); }
.table-wrap { overflow-x: auto; border: 1px solid var(--border); border-radius: 8px; }
.seeds { color: var(--muted, #666); font-size: 0.85em; white-space: nowrap; }
table { border-collapse: collapse; width: 100%; font-size: .88rem; }
th, td { padding: .38rem .6rem; border-bottom: 1px solid var(--border); white-space: nowrap; }
th { background: var(--bg); text-align: left; position: sticky; top: 0; }
th[title] { cursor: help; text-decoration: underline dotted #9aa4b2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:hover { background: #f2f6fb; }
tr.group td { background: #eef2f7; font-weight: 600; }
dl.manifest { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1.2rem; margin: 0; }
dl.manifest dt { color: var(--muted); }
dl.manifest dd { margin: 0; font-variant-numeric: tabular-nums; }
code { font-size: .88em; background: var(--bg); padding: .05em .3em; border-radius: 3px; }
.note { color: var(--muted); font-size: .88rem; }
footer { margin: 2.5rem 0 2rem; color: var(--muted); font-size: .85rem; }
.findings td { white-space: normal; vertical-align: top; }
.findings td.claim { font-weight: 600; max-width: 16rem; }
.findings td.label { white-space: nowrap; }
.findings td.deciding { font-size: .8rem; color: var(--muted); max-width: 30rem; }
"""


def _runs(report: Path) -> list[dict]:
    runs = []
    for p in sorted((report / "runs").glob("*/metrics.json")):
        doc = json.loads(p.read_text())
        doc["_dir"] = p.parent.name
        runs.append(doc)
    return runs


def _figures(report: Path, nb: str) -> list[Path]:
    return sorted((report / "figures").glob(f"{nb}_*.png"))


def pick_thumbnail(figures: list[Path], nb: str) -> Path | None:
    """The tier's key figure: ``<nb>_key.png``, else the first matching THUMBNAIL_PREFERENCE, else the first."""
    if not figures:
        return None
    names = {f.stem[len(nb) + 1:]: f for f in figures}
    if "key" in names:
        return names["key"]
    for word in THUMBNAIL_PREFERENCE.get(nb, []):
        for short, f in names.items():
            if word in short:
                return f
    return figures[0]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _e(x: Any) -> str:
    return _html.escape(str(x))


def _cell(values: list[float], fmt: str, tip: str = "") -> str:
    """One number, or mean ± SD over the seeds of a model."""
    def clean(text: str) -> str:
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # -0.000 reads as 0.000
    if len(values) == 1:
        return f'<td class="num"{tip}>{clean(fmt.format(values[0]))}</td>'
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f'<td class="num"{tip}>{clean(fmt.format(mean))} ± {fmt.format(sd)}</td>'


def _summary_table(runs: list[dict]) -> str:
    """One row per model of a tier; a model trained with several seeds (same notebook and label) shows
    mean ± SD over its seeds and links each seed's metrics.json."""
    order = {nb: i for i, nb in enumerate(NOTEBOOKS)}
    runs = sorted(runs, key=lambda r: (order.get(r.get("notebook"), len(order)), str(r.get("notebook"))))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r.get("notebook", "?"), r.get("label", r["_dir"])), []).append(r)
    cols = [c for c in METRIC_COLUMNS
            if any(isinstance(r.get("metrics", {}).get(c[0]), (int, float)) for r in runs)]
    head = "".join(f'<th title="{_e(tip)}">{_e(h)}</th>' for _, h, tip, _ in cols)
    body, last_nb = [], None
    for (nb, name), members in groups.items():
        if nb != last_nb:
            body.append(f'<tr class="group"><td colspan="{len(cols) + 1}">{_e(TITLES.get(nb, nb))}</td></tr>')
            last_nb = nb
        cells = []
        for key, _, _, fmt in cols:
            vals = [r.get("metrics", {}).get(key) for r in members]
            vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not vals:
                cells.append('<td class="num">–</td>')
                continue
            m = members[0].get("metrics", {})
            tip = f' title="k = {_e(m["iwae_k"])}"' if key == "test_iwae" and "iwae_k" in m else ""
            cells.append(_cell(vals, fmt, tip))
        links = [f'<a href="runs/{_e(r["_dir"])}/metrics.json" title="run {_e(r.get("run_id", r["_dir"]))}">'
                 for r in members]
        if len(members) == 1:
            label = f"{links[0]}{_e(name)}</a>"
        else:
            seeds = " ".join(f"{a}{_e(r.get('seed', i))}</a>" for i, (a, r) in enumerate(zip(links, members)))
            label = f'{_e(name)} <span class="seeds">({len(members)} seeds: {seeds})</span>'
        body.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    if not runs:
        return '<p class="note">No trained models recorded yet (<code>runs/*/metrics.json</code>).</p>'
    return (f'<div class="table-wrap"><table><thead><tr><th>run</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _tier_cards(report: Path, manifest: dict) -> str:
    cards = []
    for nb in NOTEBOOKS:
        title, tier = TITLES[nb], TIERS[nb]
        built = (report / f"{nb}.html").exists()
        if not built:
            cards.append(f'<section class="card missing"><div class="tier">{tier} · {nb}</div>'
                         f'<h3>{_e(title)}</h3><p class="meta">not built in this report</p></section>')
            continue
        figs = _figures(report, nb)
        thumb = pick_thumbnail(figs, nb)
        thumb_html = (f'<a class="thumb" href="figures/{_e(thumb.name)}" title="{_e(thumb.name)}">'
                      f'<img src="figures/{_e(thumb.name)}" alt="{_e(nb)}: {_e(thumb.stem)}"></a>') if thumb else ""
        links = [f'<a href="{nb}.html">Read the page</a>']
        if (report / f"{nb}.ipynb").exists():
            links.append(f'<a href="{nb}.ipynb" download>executed notebook (.ipynb)</a>')
        info = manifest.get("notebooks", {}).get(nb, {})
        meta = []
        if info.get("profile"):
            meta.append(f'profile <code>{_e(info["profile"])}</code>')
        if "wall_seconds" in info:
            meta.append(f"ran in {_duration(info['wall_seconds'])}")
        if info.get("built"):
            meta.append(f"built {_e(info['built'])}")
        all_figs = ""
        if len(figs) > 1:
            grid = "".join(f'<a href="figures/{_e(f.name)}" title="{_e(f.stem)}"><img src="figures/{_e(f.name)}" '
                           f'alt="{_e(f.stem)}"></a>' for f in figs)
            all_figs = (f'<details class="figs"><summary>all {len(figs)} figures</summary>'
                        f'<div class="grid">{grid}</div></details>')
        cards.append(f'<section class="card"><div class="tier">{tier} · {nb}</div>'
                     f'<h3><a href="{nb}.html">{_e(title)}</a></h3>{thumb_html}'
                     f'<div class="links">{"".join(links)}</div>'
                     f'<div class="meta">{" · ".join(meta)}</div>{all_figs}</section>')
    return f'<div class="tiers">{"".join(cards)}</div>'


def _manifest_summary(report: Path, manifest: dict) -> str:
    if not manifest:
        return '<p class="note">No <code>manifest.json</code> in this report folder.</p>'
    env = manifest.get("environment", {})
    prof = manifest.get("profile", "–")
    prof = ", ".join(prof) if isinstance(prof, list) else prof
    commit = str(manifest.get("git_commit", "–"))
    dirty = {True: " (with uncommitted changes to lib/ or notebooks/)", "unknown": " (git could not tell whether lib/ or notebooks/ had uncommitted changes)"}.get(manifest.get("git_dirty"), "")
    rows = [
        ("profile", f"<code>{_e(prof)}</code>"),
        ("git commit", f"<code>{_e(commit[:12])}</code>{_e(dirty)}"),
        *([("prose", f"Markdown cells, comments and docstrings of {_e(', '.join(manifest['prose'].get('notebooks', [])))}"
                     f" from <code>{_e(str(manifest['prose'].get('git_commit', '–'))[:12])}</code> (<code>make pages</code>); "
                     "code and numbers from the commit above")] if isinstance(manifest.get("prose"), dict) else []),
        ("sources sha256", f'<code title="{_e(manifest.get("sources_sha256", ""))}">'
                           f'{_e(str(manifest.get("sources_sha256", "–"))[:16])}</code>'),
        ("total wall time", f"{_duration(manifest.get('total_wall_seconds'))} "
                            f"(sum over the notebooks' last builds)"),
        *([("last build", f"{_duration(manifest['this_build_wall_seconds'])} from start to end, "
                          f"{manifest.get('this_build_jobs', 1)} notebook(s) at a time"
                          + (f", {manifest['this_build_kernel_threads']} torch thread(s) each"
                             if "this_build_kernel_threads" in manifest else "")
                          + (f"; {trained}" if (trained := trained_text(manifest)) else ""))]
          if "this_build_wall_seconds" in manifest else []),
        ("device", _e(env.get("device", "–"))),
        ("CPU", _e(f"{env.get('cpu', '–')}, {env.get('cores', '?')} cores, "
                   f"{env.get('torch_threads', '?')} torch threads")),
        ("libraries", _e(", ".join(f"{k} {env[k]}" for k in ("python", "torch", "torchvision", "numpy",
                                                            "matplotlib") if k in env) or "–")),
        ("platform", _e(env.get("platform", "–"))),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    note = manifest.get("reproducibility")
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    link = '<p><a href="manifest.json">manifest.json</a> — every parameter, version and time.</p>' \
        if (report / "manifest.json").exists() else ""
    return f'<dl class="manifest">{dl}</dl>{note_html}{link}'


def merge_verdicts(report: Path) -> Path:
    """report/verdicts.json: every notebook's verdicts/<notebook>.json in notebook order, one list."""
    report = Path(report)
    subclaims = []
    for nb in TITLES:
        path = report / "verdicts" / f"{nb}.json"
        if path.exists():
            doc = json.loads(path.read_text())
            subclaims += [{**f, "notebook": nb, "profile": doc.get("profile")} for f in doc.get("subclaims", [])]
    subclaims.sort(key=lambda f: (f["claim"], f["id"]))
    out = report / "verdicts.json"
    out.write_text(json.dumps({"subclaims": subclaims}, indent=1, ensure_ascii=False) + "\n")
    return out


def _findings_table(report: Path) -> str:
    path = report / "verdicts.json"
    if not path.exists():
        return '<p class="note">No <code>verdicts.json</code> in this report folder.</p>'
    rows, last, found = [], None, json.loads(path.read_text())["subclaims"]
    for f in found:
        claim = f'({_e(f["claim"])}) {_e(f["claim_text"])}' if f["claim"] != last else ""
        last = f["claim"]
        rows.append(f'<tr><td class="claim">{claim}</td><td>{_e(f["id"])}: {_e(f["text"])}</td>'
                    f'<td class="label">{MARKS.get(f["label"], "")} {_e(f["label"])}</td>'
                    f'<td class="deciding">{_e(f["deciding"])}</td>'
                    f'<td><a href="{_e(f["notebook"])}.html#{_e(f["anchor"])}">{_e(f["notebook"][:2])}</a></td></tr>')
    return ('<p class="note">One row per sub-claim of the declared claims table (<code>lib/claims.py</code>): '
            'kept / refuted / inconclusive by one rule (a metric that passed its known-case check, '
            'a t-interval over training seeds wholly above an effect floor, or for an arm of one training seed the '
            't-interval of 5 × the largest seed SD measured for its metric on the notebook\'s arms of several training seeds, '
            'a label only for a gap larger than any plausible seed SD: '
            '<code>docs/methods.md</code>); sub-claims the objective guarantees are marked so and count as no support. The rule was '
            'written in December 2026 after earlier builds\' numbers had been seen, and revised after each of two reviews since. '
            '<a href="verdicts.json">verdicts.json</a></p><div class="table-wrap findings"><table><thead><tr>'
            '<th>claim</th><th>sub-claim</th><th>label</th><th>deciding numbers</th><th>page</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def trained_text(manifest: dict) -> str:
    """How many of the models the last build recorded it trained, and how many it loaded from the model cache
    (``this_build_models``): its wall time covers only the first. '' when the manifest does not say."""
    m = manifest.get("this_build_models")
    if not isinstance(m, dict) or not m.get("recorded"):
        return ""
    n, trained = m["recorded"], m.get("trained", 0)
    if trained >= n:
        return f"every one of its {n} models trained in it"
    if trained == 0:
        return f"its {n} models all loaded from the model cache, trained earlier"
    return f"{trained} of its {n} models trained in it, {n - trained} loaded from the model cache"


def stale_text(doc: dict) -> str:
    """'' when every rung built was built from today's code; else which rungs were not, at which commit, and what
    changed since (their labels are that code's)."""
    old = [r for r in doc.get("rungs", []) if r.get("folder") and r.get("code_changed_since", []) != []]
    if not old:
        return ""
    which = f"rung {old[0]['rung']} was" if len(old) == 1 else f"rungs {', '.join(str(r['rung']) for r in old)} were"
    commits = sorted({str(r.get("built_at") or "unknown")[:7] for r in old})
    files = sorted({f for r in old for f in (r.get("code_changed_since") or [])})
    its = "its" if len(old) == 1 else "their"
    since = (f"the code that computes {its} numbers has changed since ({', '.join(files)})" if files else
             "whether the code has changed since cannot be told: built from uncommitted code")
    commit = "commit" if len(commits) == 1 else "commits"
    return (f"{which} built at {commit} {', '.join(commits)}, and {since}: {its} labels are that code's "
            f"(the default report's column is its own build's); make study rebuilds {'it' if len(old) == 1 else 'them'}.")


def _study_link(report: Path) -> str:
    """A pointer to the budget ladder (make study) when report/study/ holds one."""
    path = report / "study" / "ladder.json"
    if not path.exists():
        return ""
    doc = json.loads(path.read_text())
    budgets, rungs = doc.get("budgets", {}), doc.get("rungs", [])
    n = len(next(iter(budgets.values()), []))
    built = [r["rung"] for r in rungs if r.get("folder")] if not doc.get("complete", True) else list(range(1, n + 1))
    if not built:
        return ""
    tops = ", ".join(f"{m} {v[max(built) - 1]}" for m, v in budgets.items())
    subs = doc.get("subclaims", [])
    changed = sum(not s.get("stable") for s in subs)
    flat = sum(bool(s.get("stable")) and set(s.get("labels", [])) - {None} == {"inconclusive"} for s in subs)
    where = (f"at {n} budgets up to {_e(tops)} epochs" if len(built) == n else
             f"at {n} budgets, of which {len(built)} {'is' if len(built) == 1 else 'are'} built so far, up to "
             f"{_e(tops)} epochs")
    judged = {s.get("id") for s in subs}
    absent = [] if not (report / "verdicts.json").exists() else [
        f["id"] for f in json.loads((report / "verdicts.json").read_text())["subclaims"]
        if f["id"] not in judged and f["label"] not in ("holds by construction", "untestable as stated")]
    return (f'<p class="note"><b>Do the labels change with longer training?</b> The <a href="study/index.html">budget '
            f'ladder</a> judges {len(subs)} sub-claims again {where}, under its own recipe (the course report\'s '
            f'constant learning rate, two training seeds)'
            + (f'; {_e(", ".join(absent))} need models it does not train' if absent else '')
            + f': {changed} change label along it, and {flat} are inconclusive at every rung.'
            + (f' <b>Older code:</b> {_e(stale)}' if (stale := stale_text(doc)) else '') + '</p>')


def older_code_text(commit: str, changed: list[str] | None) -> str:
    """'' when the report was built from today's code (``changed`` == []); else a sentence saying it was not."""
    if changed == []:
        return ""
    since = (f"the code that computes its numbers has changed since ({', '.join(changed)})" if changed is not None
             else "whether its code has changed since cannot be told")
    return (f"These pages were built at commit {commit[:7]}, and {since}: every number and label shown is that "
            "commit's code's. make report rebuilds them; docs/methods.md says what changed and which labels it moves.")


def write_index(report: Path, code_changed: list[str] | None = ()) -> None:
    """report/index.html: the tiers with a key figure each, one summary table of every run's metrics,
    the manifest in brief, links to every page, notebook and figure. Also installs report/assets/.
    ``code_changed``: the result files whose code changed since the build (``prose.changed_code``; None: cannot
    be told), said above the findings; empty (a fresh build) says nothing."""
    report = Path(report)
    install_assets(report)
    mpath = report / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    runs = _runs(report)
    env = manifest.get("environment", {})
    prof = manifest.get("profile", "")
    prof = ", ".join(prof) if isinstance(prof, list) else prof
    trained = trained_text(manifest)
    sub = " · ".join(x for x in [
        f"profile <code>{_e(prof)}</code>" if prof else "",
        f"commit <code>{_e(str(manifest.get('git_commit', ''))[:12])}</code>" if manifest.get("git_commit") else "",
        f"device {_e(env['device'])}" if env.get("device") else "",
        f"built in {_duration(manifest.get('this_build_wall_seconds'))}"
        + (f" ({_e(trained)})" if trained else "") if "this_build_wall_seconds" in manifest else "",
    ] if x)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Generative models on MNIST — report</title>
<style>{INDEX_CSS}</style></head>
<body>
<header class="top"><div class="wrap">
<h1>Generative models on MNIST — report</h1>
<p class="sub">{sub or "VAE, ELBO derivation, GAN, β-VAE and noisy data, one executed notebook per tier"}</p>
</div></header>
<main class="wrap">
<h2 id="findings">Findings: the course report's claims, measured</h2>
{f'<p class="note older"><b>Built from older code.</b> {_e(older)}</p>' if (older := older_code_text(
    str(manifest.get("git_commit", "unknown")), None if code_changed is None else list(code_changed))) else ""}
{_findings_table(report)}
{_study_link(report)}
<h2 id="tiers">Tiers</h2>
{_tier_cards(report, manifest)}
<h2 id="summary">Summary of every trained model</h2>
<p class="note">One row per trained model; hover a column name for its definition; the run's name links
to its <code>metrics.json</code> (every number, the per-epoch history and the run's full spec).
Bounds are in nats per test image.</p>
{_summary_table(runs)}
<h2 id="build">Build</h2>
{_manifest_summary(report, manifest)}
<footer>Built by <code>make report</code> (<code>python -m builder.report</code>); pages render offline
(MathJax 3 bundled in <code>assets/mathjax/</code>).</footer>
</main>
</body></html>
"""
    (report / "index.html").write_text(page, encoding="utf-8")
