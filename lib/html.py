"""HTML for the report: each executed notebook as a page, and report/index.html."""
from __future__ import annotations

import html as _html
import json
from pathlib import Path

from .config import NOTEBOOKS

TITLES = {
    "01_vae_basic": "Basic: convolutional VAE with BCE, MSE and L1 reconstruction",
    "02_vae_derivation": "Intermediate: the ELBO derivation, checked numerically",
    "03_gan": "Advanced: the MLP GAN",
    "04_beta_vae": "Advanced: β-VAE, β ∈ {1, 2, 3, 4}",
    "05_noisy_data": "Advanced: VAE trained on salt-and-pepper data",
}


def export(ipynb: Path, out_html: Path) -> None:
    """Executed notebook -> standalone HTML page."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    Path(out_html).write_text(body, encoding="utf-8")


def _runs(report: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((report / "runs").glob("*/metrics.json"))]


def write_index(report: Path) -> None:
    """report/index.html: the tiers, links, and one summary table of every run's metrics."""
    report = Path(report)
    rows = []
    cols = ["test_bound", "test_iwae", "fid", "min_class_share", "recognisability", "gradient_energy"]
    for r in _runs(report):
        m = r["metrics"]
        cells = "".join(f"<td>{m[c]:.3f}</td>" if isinstance(m.get(c), (int, float)) else "<td>–</td>" for c in cols)
        rows.append(f"<tr><td>{_html.escape(r['notebook'])}</td><td>{_html.escape(r['label'])}</td>{cells}</tr>")
    tiers = "".join(
        f'<li><a href="{nb}.html">{_html.escape(TITLES[nb])}</a> (<a href="{nb}.ipynb">notebook</a>)</li>'
        for nb in NOTEBOOKS if (report / f"{nb}.html").exists()
    )
    head = "".join(f"<th>{c}</th>" for c in ["notebook", "run", *cols])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Generative models on MNIST</title></head>
<body><h1>Generative models on MNIST — report</h1><ol>{tiers}</ol>
<h2>Summary of every trained model</h2><table border="1"><tr>{head}</tr>{''.join(rows)}</table>
<p><a href="manifest.json">manifest.json</a></p></body></html>"""
    (report / "index.html").write_text(page, encoding="utf-8")
