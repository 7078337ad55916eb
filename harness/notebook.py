"""What a tier notebook calls: ``cfg, ctx = setup("01_vae_basic", globals())`` (parameters -> validated
config, and a context that scores, records runs, saves figures and the verdicts of ``lib.claims``), the RunSpecs
a config describes (``spec_from``, ``arm_specs``, ``basic_bce_specs``), ``table``, ``summary``, ``budget_check`` and
``gate_markdown``."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib import claims, data, evaluate, stats, store
from lib.claims import Finding
from lib.train import RunSpec
from .config import parameter_names, resolve, seed_everything, set_threads

SAVED_SAMPLES = 1000  # samples kept per run in report/runs/ (the scores use all n_samples)


class Context:
    """One notebook's run: its resolved config, device, and the folder its figures and runs go to."""

    def __init__(self, notebook: str, cfg: dict[str, Any], threads: int):
        self.notebook, self.cfg, self.threads = notebook, cfg, threads
        self.device: torch.device = cfg["device"]
        self.out = Path(cfg["output_dir"])
        for sub in ("figures", "runs"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self._test_x = self._clf = None

    def test_images(self) -> torch.Tensor:
        """The clean test images (the first ``test_subset`` of them), float [N, 1, 28, 28] on the device."""
        if self._test_x is None:
            self._test_x = data.subset(data.load_split("test").float_images(self.device), self.cfg["test_subset"])
        return self._test_x

    def classifier(self) -> tuple[evaluate.Classifier, float]:
        """The in-project MNIST classifier of the profile (cached on disk) and its test accuracy."""
        if self._clf is None:
            self._clf = evaluate.get_classifier(self.cfg["classifier"], self.device)
        return self._clf

    def score(self, run, test_x: torch.Tensor | None = None, reference_x: torch.Tensor | None = None,
              label: str | None = None, target: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
        """``evaluate.score_vae`` of a trained VAE run with this notebook's sample and IWAE sizes, recorded under
        runs/ when ``label`` is given. ``test_x`` defaults to the clean test images; ``target`` is what the bounds
        score against (a denoising VAE's clean digits; default ``test_x``). A GAN run gets only the sample
        scores (``score_samples``)."""
        s, cfg, clf = run.spec, self.cfg, self.classifier()[0]
        test_x = self.test_images() if test_x is None else test_x

        def compute():
            if s.model == "GAN":
                samples = evaluate.samples_of(run.model, cfg["n_samples"], s.seed)
                return evaluate.score_samples(clf, samples, test_x if reference_x is None else reference_x), samples
            return evaluate.score_vae(
                run.model, test_x, clf=clf, recon=s.recon, beta=s.beta, recon_weight=s.recon_weight,
                n_samples=cfg["n_samples"], iwae_k=cfg["iwae_k"], iwae_images=cfg["iwae_images"], seed=s.seed,
                reference_x=reference_x, target=target)

        # kept by store.memo: another tier scoring the same weights on the same images reads these numbers
        key = {"weights": store.digest(run.model), "spec": s.key(), "classifier": store.digest(clf),
               "test": store.digest(test_x), "reference": None if reference_x is None else store.digest(reference_x),
               **({} if target is None else {"target": store.digest(target)}),
               **{k: cfg[k] for k in ("n_samples", "iwae_k", "iwae_images")}}
        metrics, samples = store.memo("score", key, compute, files=(*store.SCORE_SOURCES, "harness/notebook.py"))
        metrics["seed"] = s.seed  # the training seed: lib.claims pairs arms by it
        if label is not None:
            self.record(run, metrics, samples, label)
        return metrics, samples

    def findings(self, findings: list[Finding]) -> str:
        """Save the verdicts (verdicts/<notebook>.json, what the report's findings table is built from) and return
        them as Markdown to display."""
        save_findings(findings, self.out, self.notebook, self.cfg["profile"])
        return findings_markdown(findings)

    def figure(self, fig, name: str):
        """Save ``fig`` as figures/<notebook>_<name>.png and return it (so the notebook shows it)."""
        fig.savefig(self.out / "figures" / f"{self.notebook}_{name}.png", dpi=110, bbox_inches="tight")
        return fig

    def record(self, run, metrics: dict[str, Any], samples: torch.Tensor, label: str, name: str | None = None) -> Path:
        """runs/<run-id>/metrics.json and samples.npz (the first ``SAVED_SAMPLES`` of the scored samples,
        uint8 [N, 28, 28]) for one trained model."""
        d = self.out / "runs" / (name or run.run_id)  # name: a run another tier records too (shared cache entry)
        d.mkdir(parents=True, exist_ok=True)
        history = [{k: v for k, v in row.items() if k != "train_seconds"} for row in run.history]
        doc = {"run_id": run.run_id, "notebook": self.notebook, "label": label, "seed": run.spec.seed,
               "spec": run.spec.key(), "metrics": _plain(metrics), "history": _plain(history)}
        (d / "metrics.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        np.savez_compressed(d / "samples.npz", samples=np.asarray(samples[:SAVED_SAMPLES], dtype=np.uint8))
        return d


def setup(notebook: str, namespace: dict[str, Any]) -> tuple[dict[str, Any], Context]:
    """The notebook's parameters (read from ``namespace``, its globals) merged over the profile and
    validated; then threads and seeds set. Returns (cfg, ctx). (``make report`` refuses a ``-p`` name
    that is no parameter of the notebook before running it: builder.report.plan.)"""
    params = {name: namespace[name] for name in parameter_names(notebook) if name in namespace}
    profile = params.pop("profile", "default")
    cfg = resolve(notebook, profile, **params)
    threads = set_threads()
    seed_everything(cfg["seed"])
    return cfg, Context(notebook, cfg, threads)


def spec_from(cfg: dict[str, Any], tag: str, model: str = "ConvVAE", **changes: Any) -> RunSpec:
    """The RunSpec a notebook's resolved config describes (same config -> same run id -> cache hit)."""
    base = dict(tag=tag, model=model, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                lr_schedule=cfg.get("lr_schedule", "constant"), latent_dim=cfg["latent_dim"], seed=cfg["seed"],
                train_subset=cfg["train_subset"], adam_betas=(0.9, cfg.get("adam_beta2", 0.999)),
                test_subset=cfg["test_subset"],
                # bf16 does not pay for the tiny BetaVAE on a CPU (make bench), so it stays fp32
                precision="fp32" if model == "BetaVAE" else cfg.get("precision", "fp32"))
    return RunSpec(**{**base, **changes})


def arm_specs(cfg: dict[str, Any], tag: str, seeds: str = "seeds", model: str = "ConvVAE", **changes: Any) -> list[RunSpec]:
    """One arm's RunSpecs, one per training seed: seed, seed + 1, ... (``cfg[seeds]`` of them). The first seed
    keeps the plain tag, so that another tier asking for the same model gets the same run from the cache."""
    first = cfg["seed"]
    return [spec_from(cfg, tag if s == first else f"{tag}-s{s}", model, seed=s, **changes)
            for s in range(first, first + cfg.get(seeds, 1))]


def basic_bce_specs(cfg: dict[str, Any], epochs: int) -> list[RunSpec]:
    """The basic tier's BCE VAE (01_vae_basic's, in ``cfg``'s profile) trained for ``epochs``, for each of its
    training seeds: the models 02, 03 and 05 share with 01."""
    shared = ("seed", "device", "precision", "train_subset", "test_subset", "classifier", "output_dir")
    basic = resolve("01_vae_basic", cfg["profile"], epochs=epochs, **{k: str(cfg[k]) if k == "device" else cfg[k]
                                                                      for k in shared})
    return arm_specs(basic, "vae-bce", recon="bce")


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float):
        return round(x, 6)
    return x


def table(rows: list[dict[str, Any]], columns: list[str] | None = None, digits: int = 2) -> str:
    """A Markdown table (display it with IPython.display.Markdown)."""
    columns = columns or list(rows[0])

    def fmt(v):  # a small float in scientific notation, None as a dash
        if isinstance(v, float):
            return f"{v:.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
        return "—" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def summary(arms: dict[str, list[dict[str, Any]]], columns: list[str], digits: int = 2) -> str:
    """A Markdown table with one row per arm: each column's mean ± SD over the arm's seeds (the value alone
    for one seed), and the number of seeds."""
    rows = []  # SMALL metrics get two more digits
    for name, per_seed in arms.items():
        row = {"model": name, "seeds": str(len(per_seed))}
        for c in columns:
            vals = [s[c] for s in per_seed if isinstance(s.get(c), (int, float)) and not isinstance(s.get(c), bool)]
            row[c] = stats.mean_sd(vals, digits if c not in SMALL else digits + 2) if vals else ""
        rows.append(row)
    return table(rows, ["model", "seeds", *columns])


SMALL = {"gradient_energy", "sharpness_gap", "sharpness_gap_binarised", "fid_se"}


def budget_check(runs: list, epochs: int) -> str:
    """Is the budget long enough? The test bound's move over the last two epochs against the seed spread of
    the final bound (Markdown; empty with fewer than two seeds or three epochs)."""
    if len(runs) < 2 or epochs < 3:
        return ""
    final = [r.history[-1]["test_bound"] for r in runs]
    moved = [abs(r.history[-1]["test_bound"] - r.history[-3]["test_bound"]) for r in runs]
    spread = stats.Arm("final", final).sd
    return (f"**Budget check.** Over the last two epochs the test bound moved {stats.mean_sd(moved, 3)} nats (mean over "
            f"{len(runs)} seeds); the final bound differs between seeds by an SD of {spread:.3f} nats. "
            + ("The budget is long enough by this rule." if max(moved) < spread else
               "It still moves more than the seed spread: **the budget is short by this rule**, and the verdicts "
               "judge models that are still improving (the `full` profile trains the course report's budgets)."))


def findings_markdown(findings: list[Finding]) -> str:
    """The verdicts as Markdown: one heading line per claim, one line per sub-claim with its anchor."""
    lines, last = [], None
    for f in findings:
        if f.claim != last:
            lines.append(f"\n**({f.claim}) {f.claim_text}**\n")
            last = f.claim
        note = f" *{f.note}.*" if f.note else ""
        lines.append(f'- <span id="{f.anchor}"></span>{claims.LABELS[f.label]} **{f.label}** — {f.id}: {f.text}. '
                     f"{f.deciding.rstrip('.')}.{note}")
    return "\n".join(lines) if lines else "No sub-claim has the arms it needs in this run."


def save_findings(findings: list[Finding], out: Path, notebook: str, profile: str) -> Path:
    """<out>/verdicts/<notebook>.json: what the report's findings table is built from."""
    path = Path(out) / "verdicts" / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"notebook": notebook, "profile": profile, "subclaims": [asdict(f) for f in findings]}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


def gate_markdown(checks: dict[str, bool], known: dict[str, dict], metrics: list[str]) -> str:
    """The known-case gate as Markdown: each known case's scores on ``metrics``, then every check of
    ``evaluate.METRIC_CHECKS`` and whether it passed (a metric that failed enters no verdict)."""
    rows = [{"known case": name, **{m: s[m] for m in metrics}} for name, s in known.items()]
    return table(rows, ["known case", *metrics], digits=4) + "\n\n" + "\n".join(
        f"- **{m}** ({word}): {rule} — {'passes ✓' if checks[m] else '**fails** ✗ (enters no verdict)'}"
        for m, (word, rule, _) in evaluate.METRIC_CHECKS.items())
