"""Measured quality of samples and reconstructions in an in-project MNIST classifier's features and in pixels;
``score_vae`` gathers every number of a trained VAE (its likelihood bounds from ``lib.bounds``); each metric
is checked on images of known quality (``check_metrics``, ``restoration_checks``) before it enters a verdict."""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, median_filter as _median_filter
from torch import nn

from . import data, losses, models, noise, stats
from .bounds import EVAL_BATCH, iwae_bound, test_bound
from .data import as_float, generator
from .progress import progress
from .store import CACHE, digest, exclusive, load_checkpoint, memo, save_checkpoint

# --- the in-project MNIST classifier --------------------------------------------------------

class Classifier(nn.Module):
    """LeNet-style CNN; ``features`` is the 128-d penultimate layer used for the Fréchet distance."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


CLASSIFIER_SETTINGS = {
    "full": dict(epochs=4, train_subset=None, min_accuracy=0.99),
    "smoke": dict(epochs=1, train_subset=5_000, min_accuracy=None),
}
_classifiers: dict[tuple[str, str], tuple[Classifier, float]] = {}


def get_classifier(kind: str = "full", device: torch.device | str = "cpu", cache: Path | None = None,
                   show_progress: bool = True) -> tuple[Classifier, float]:
    """The MNIST classifier and its test accuracy, loaded or trained (seeded); ``full`` must reach 99 %."""
    if kind not in CLASSIFIER_SETTINGS:
        raise ValueError(f"classifier kind {kind!r}; allowed {sorted(CLASSIFIER_SETTINGS)}")
    device = torch.device(device)
    if (kind, str(device)) in _classifiers:
        return _classifiers[kind, str(device)]
    cfg = CLASSIFIER_SETTINGS[kind]
    # keyed by the classifier's own code and settings (not the rest of this module) and the data
    src = inspect.getsource(Classifier) + inspect.getsource(get_classifier) + repr(cfg) + kind + data.data_fingerprint()
    path = Path(cache or CACHE) / f"classifier-{kind}-{hashlib.sha256(src.encode()).hexdigest()[:10]}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        clf = Classifier()
    with exclusive(path):  # a second kernel needing the classifier waits for the first to train it
        state = load_checkpoint(path, keys=("model", "test_accuracy"))
        if state is not None:
            clf.load_state_dict(state["model"])
        clf.to(device)
        if state is None:
            train, test = data.load_split("train"), data.load_split("test")
            x = data.subset(train.float_images(device), cfg["train_subset"])
            y = data.subset(train.labels.to(device), cfg["train_subset"])
            opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
            g = generator(1234)
            for epoch in range(cfg["epochs"]):
                clf.train()
                batches = list(data.batches(len(x), 128, g))
                for idx in progress(batches, len(batches), f"classifier epoch {epoch + 1}/{cfg['epochs']}",
                                    show_progress):
                    idx = idx.to(device)
                    loss = F.cross_entropy(clf(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            clf.eval()
            acc = (predict_proba(clf, test.float_images(device)).argmax(1).cpu() == test.labels).float().mean().item()
            state = {"model": clf.state_dict(), "test_accuracy": acc}
            save_checkpoint(path, state)
    clf.eval()
    acc = state["test_accuracy"]
    if cfg["min_accuracy"] is not None and acc < cfg["min_accuracy"]:
        raise RuntimeError(f"classifier test accuracy {acc:.4f} < required {cfg['min_accuracy']}; delete {path} "
                           "and retrain")
    _classifiers[kind, str(device)] = (clf, acc)
    return clf, acc


@torch.inference_mode()
def _batched(fn, clf: Classifier, images, batch_size: int) -> torch.Tensor:
    x = as_float(images).to(next(clf.parameters()).device)
    return torch.cat([fn(b) for b in x.split(batch_size)])


def features(clf: Classifier, images, batch_size: int = 2000) -> torch.Tensor:
    """The classifier's penultimate features [N, 128], float64 on the CPU."""
    return _batched(clf.features, clf, images, batch_size).double().cpu()


def predict_proba(clf: Classifier, images, batch_size: int = 2000) -> torch.Tensor:
    return _batched(lambda b: F.softmax(clf(b), 1), clf, images, batch_size).cpu()


# --- metrics --------------------------------------------------------------------------------

def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(stats_a, stats_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2): symmetric, 0 for equal Gaussians."""
    (mu_a, s_a), (mu_b, s_b) = stats_a, stats_b
    w, v = np.linalg.eigh(s_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_a @ s_b @ sqrt_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def classifier_fid(clf: Classifier, images_a, images_b) -> float:
    """Fréchet distance between Gaussians fitted to the classifier's penultimate features.
    Not Inception FID: an MNIST-specific feature space, comparable only within this project."""
    return frechet_distance(gaussian_stats(features(clf, images_a)), gaussian_stats(features(clf, images_b)))


def coverage(probs: torch.Tensor) -> dict[str, float]:
    """Predicted-class histogram of samples: smallest class share, entropy (nats; log 10 = uniform),
    and recognisability = mean max-probability."""
    share = torch.bincount(probs.argmax(1), minlength=10).double() / len(probs)
    nz = share[share > 0]
    return {"min_class_share": share.min().item(), "class_entropy": float(-(nz * nz.log()).sum()),
            "recognisability": probs.max(1).values.double().mean().item(),
            "class_shares": [round(s, 4) for s in share.tolist()]}


def image_stats(images) -> dict[str, float]:
    """Measures for the course report's words: ``mean_intensity`` (bright vs dark/faint), ``stroke_brightness``
    (mean of each image's 50 brightest pixels: faint strokes score low), ``gradient_energy`` (mean squared
    finite difference: blur lowers it, so it measures "sharp"), ``greyness`` (mean 4x(1-x): 0 for
    crisp black/white, 1 only when every pixel is mid-grey (0.5))."""
    x = as_float(images).cpu().double()[:, 0]
    dx, dy = x[:, :, 1:] - x[:, :, :-1], x[:, 1:, :] - x[:, :-1, :]
    return {"mean_intensity": x.mean().item(),
            "stroke_brightness": x.flatten(1).topk(50, dim=1).values.mean().item(),
            "gradient_energy": (dx.pow(2).mean((1, 2)) + dy.pow(2).mean((1, 2))).mean().item(),
            "greyness": (4 * x * (1 - x)).mean().item()}


def psnr_ssim(images, clean) -> dict[str, float | None]:
    """PSNR (dB) from the MSE pooled over all images and pixels, 10 log10(1 / MSE), with its standard
    error over images (delta method); mean SSIM (scikit-image, data_range 1) and its SE. ``psnr`` is
    None when the images equal the clean ones (MSE 0: no finite PSNR), never ``inf``."""
    from skimage.metrics import structural_similarity

    a, b = (as_float(x).cpu()[:, 0].double().numpy() for x in (images, clean))
    per_image = ((a - b) ** 2).mean((1, 2))
    mse = float(per_image.mean())
    ssim = np.array([structural_similarity(bi, ai, data_range=1.0) for ai, bi in zip(a, b)])
    out = {"mse": mse, "psnr": None, "psnr_se": None,
           "ssim": float(ssim.mean()), "ssim_se": float(ssim.std(ddof=1) / np.sqrt(len(ssim)))}
    if mse > 0:
        out["psnr"] = float(10 * np.log10(1.0 / mse))
        out["psnr_se"] = float(10 / np.log(10) * per_image.std(ddof=1) / np.sqrt(len(per_image)) / mse)
    return out


@torch.inference_mode()
def precision_recall(clf: Classifier, samples, real, k: int = 3, n: int = 5000) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) in the classifier's features, on ``n`` of each:
    precision = share of samples inside some real image's k-nearest-neighbour ball (fidelity), recall = share of
    real images inside some sample's ball (coverage). FID mixes the two; these tell them apart."""
    fs, fr = features(clf, samples[:n]).float().cpu(), features(clf, real[:n]).float().cpu()

    def radii(f):
        return torch.cat([torch.cdist(c, f).kthvalue(k + 1, dim=1).values for c in f.split(1000)])

    def inside(a, b, rb):
        return torch.cat([(torch.cdist(c, b) <= rb[None]).any(1) for c in a.split(1000)])

    return {"precision": inside(fs, fr, radii(fr)).float().mean().item(),
            "recall": inside(fr, fs, radii(fs)).float().mean().item()}


@torch.inference_mode()
def nearest_training_distance(images, train, n: int = 1000) -> float:
    """Median pixel-space (L2) distance from each of ``n`` images to its nearest training image: a model that
    copies its training set scores far below real test digits."""
    x, t = as_float(images[:n]).cpu().flatten(1), as_float(train).cpu().flatten(1)
    return float(torch.cat([torch.cdist(x, c).min(1, keepdim=True).values for c in t.split(10_000)], 1)
                 .min(1).values.median())


def median_filter(images, size: int = 3) -> torch.Tensor:
    """A size x size median filter on each image (scipy.ndimage): the standard salt-and-pepper baseline."""
    x = as_float(images).cpu()[:, 0].numpy()
    return torch.from_numpy(_median_filter(x, size=(1, size, size), mode="nearest")).unsqueeze(1)


def restoration_baselines(noisy, clean, train_images) -> tuple[dict[str, dict], str]:
    """``psnr_ssim`` against the ``clean`` originals of what a restoration must beat: the ``noisy`` input, its
    3 x 3 median filter and the best (by PSNR) blank image: black, the training images' mean intensity or
    mean digit; and that blank image's name."""
    k, m = len(clean), train_images.mean()
    blanks = {name: psnr_ssim(x.expand(k, -1, -1, -1), clean) for name, x in
              {"black": torch.zeros(1, 1, 28, 28), f"constant {m:.2f}": torch.full((1, 1, 28, 28), m.item()),
               "mean digit": train_images.mean(0, keepdim=True)}.items()}
    best = max(blanks, key=lambda n: blanks[n]["psnr"])
    return {"noisy input": psnr_ssim(noisy, clean),
            "3 × 3 median filter": psnr_ssim(median_filter(noisy).to(noisy.device), clean),
            f"best blank image ({best})": blanks[best]}, best


def superimposed(images, real) -> dict[str, float]:
    """How close samples are to one average image: cosine similarity of each sample to the real digits'
    mean image (mean over samples), and the pixel spread across samples (mean over pixels of the SD over
    samples) relative to the real digits' spread. Superimposed digits: similarity high, spread small."""
    x, r = (as_float(i).cpu()[:, 0].double().flatten(1) for i in (images, real))
    cos = F.cosine_similarity(x, r.mean(0, keepdim=True), dim=1).mean().item()
    return {"mean_digit_similarity": cos, "pixel_spread": (x.std(0).mean() / r.std(0).mean()).item()}


def is_superimposed(scores: dict) -> bool:
    """The declared rule for "superimposed digits": every sample is close to the mean digit and they barely differ."""
    return scores["mean_digit_similarity"] > 0.9 and scores["pixel_spread"] < 0.1


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """The latent dimensions a VAE uses (Burda et al. 2016): those whose posterior mean moves with the image,
    Var_x(E_q[z_u | x]) > ``threshold``, over the rows of ``mu`` ([N, latent], one per image). A dimension whose
    KL is small but not 0 can still count as unused: the test is how much it tells images apart."""
    return int((mu.var(0) > threshold).sum())


@torch.inference_mode()
def reconstruct(model, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Decoder mean at z = mu (no sampling): deterministic reconstructions in [0, 1]."""
    model.eval()
    return torch.cat([model.decode(model.encode(b)[0]) for b in x.split(batch_size)])


# --- scoring a trained run ------------------------------------------------------------------

_memo: dict[tuple, object] = {}


def _memoised(images, key: tuple, compute: Callable):
    """``compute()`` kept per process under ``key`` and the images' size and pixel sums (clean or noised)."""
    x = as_float(images).cpu().double()
    key = (len(x), round(x.sum().item(), 6), round(x.pow(2).sum().item(), 6), *key)
    if key not in _memo:
        _memo[key] = compute()
    return _memo[key]


def reference_stats(clf: Classifier, test_images) -> tuple:
    """Feature Gaussian of the reference images (the test set, or a noised copy), memoised by content."""
    return _memoised(test_images, (str(next(clf.parameters()).device), id(clf)),
                     lambda: gaussian_stats(features(clf, test_images)))


def _ref_energy(test_images, binarise: bool = False) -> float:
    return _memoised(test_images, (binarise,), lambda: image_stats(
        (as_float(test_images).cpu() >= 0.5).float() if binarise else test_images)["gradient_energy"])


def fid_and_se(clf: Classifier, samples, ref_stats: tuple, rounds: int = 30, seed: int = 0) -> tuple[float, float]:
    """Classifier-FID of ``samples`` against fixed reference statistics, and its bootstrap SE over the samples."""
    f = features(clf, samples).numpy()

    def fid_of(idx):
        return frechet_distance(gaussian_stats(f[idx]), ref_stats)

    return fid_of(np.arange(len(f))), stats.bootstrap_se(fid_of, len(f), rounds, seed)


def fid_floor(clf: Classifier, n: int, test_images, rounds: int = 30) -> tuple[float, float]:
    """Real-vs-real classifier-FID at sample size ``n``: the last ``n`` training digits against the test
    images (what a perfect generator would score at this size), and its bootstrap SE."""
    train = data.load_split("train").float_images("cpu")
    return fid_and_se(clf, train[-n:], reference_stats(clf, test_images), rounds)


def score_samples(clf: Classifier, samples, test_images) -> dict:
    """Classifier-FID with its bootstrap SE, class coverage, image stats, the sharpness gaps and the
    superimposition measures of ``samples``, against ``test_images``."""
    fid, fid_se = fid_and_se(clf, samples, reference_stats(clf, test_images))
    out = {"fid": fid, "fid_se": fid_se, **coverage(predict_proba(clf, samples)), **image_stats(samples)}
    out["sharpness_gap"] = abs(out["gradient_energy"] - _ref_energy(test_images))
    # the control: both sides thresholded at 0.5, so a grey point summary (a mean or median) cannot help
    binary = (as_float(samples).cpu() >= 0.5).float()
    out["sharpness_gap_binarised"] = abs(image_stats(binary)["gradient_energy"] - _ref_energy(test_images, True))
    return out | superimposed(samples, test_images)


def decoder_gradient_without_recon(model, x) -> tuple[float, int, float]:
    """The ablation "no reconstruction term": one backward pass of the loss with recon_weight 0 through ``model``
    (a fresh ConvVAE); the largest |gradient| on any decoder weight, their number, and the largest on the μ head."""
    x_logits, mu, logvar = model(x)
    losses.elbo(x_logits, x, mu, logvar, "bce", beta=1.0, recon_weight=0.0).loss.backward()
    decoder = [*model.get_temp.parameters(), *model.decoder.parameters()]
    return (max(p.grad.abs().max().item() for p in decoder), sum(p.numel() for p in decoder),
            max(p.grad.abs().max().item() for p in model.get_mu.parameters()))


def samples_of(model, n: int, seed: int) -> torch.Tensor:
    """The ``n`` samples a run is scored on (uint8 [n, 28, 28]), from a generator seeded by the run's seed."""
    device = next(model.parameters()).device
    return data.to_uint8(model.sample(n, generator=generator(seed + 6, device)))


def score_vae(model, test_x: torch.Tensor, *, clf: Classifier, recon: str = "bce", beta: float = 1.0,
              recon_weight: float = 1.0, n_samples: int, iwae_k: int, iwae_images: int, seed: int,
              reference_x: torch.Tensor | None = None, target: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """Every number of a trained VAE on ``test_x`` (noisy for the noisy tier), its samples compared with
    ``reference_x`` (default ``test_x``); and those ``n_samples`` samples (uint8 [N, 28, 28], fixed seed).
    ``target``: what the bounds score the reconstructions against (a denoising VAE's clean digits; default test_x)."""
    device = next(model.parameters()).device
    bound = test_bound(model, test_x, recon, beta, recon_weight, generator=generator(seed + 4, device),
                       show_progress=True, target=target)
    m = {f"test_{k}": v for k, v in bound.items()}
    if recon == "bce":
        m["iwae_k"], m["iwae_images"] = iwae_k, min(iwae_images, len(test_x))
        t = None if target is None else target[:iwae_images]
        m["test_iwae"] = iwae_bound(model, test_x[:iwae_images], iwae_k, generator(seed + 5, device), target=t)
        # the ELBO on the same images as the IWAE bound, so that their gap is a like-for-like number
        m["iwae_images_bound"] = test_bound(model, test_x[:iwae_images], recon, generator=generator(seed + 4, device),
                                            target=t)["bound"]
    samples = samples_of(model, n_samples, seed)
    m.update(score_samples(clf, samples, test_x if reference_x is None else reference_x))
    return m, samples


# --- checking that a metric measures its word ----------------------------------------------------

def _blur(x: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur (σ = 1 px) of each image [N, 1, 28, 28]."""
    return torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, 1, 1)))


def known_cases(n: int, test_images, seed: int = 0) -> dict[str, torch.Tensor]:
    """Image sets of known quality (uint8 [n, 28, 28] each): ``real`` = the last n training digits (not the
    test set the metrics compare with); ``blurred`` (σ = 1 px), ``speckled`` (10 % salt-and-pepper) and
    ``dimmed`` (60 % brightness) copies of them; ``one class`` (n training 1s); ``mean digit`` (the test set's
    mean image n times); ``untrained decoder`` (samples of an untrained ConvVAE)."""
    train = data.load_split("train")
    x = train.float_images("cpu")
    real, ones = x[-n:], x[train.labels == 1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = models.ConvVAE().eval().sample(n, generator=generator(seed + 1))
    cases = {"real": real, "blurred": _blur(real),
             "speckled": noise.salt_and_pepper(real, 0.1, generator=generator(seed + 2)), "dimmed": 0.6 * real,
             "one class": ones[torch.arange(n) % len(ones)],
             "mean digit": as_float(test_images).cpu().mean(0, keepdim=True).expand(n, -1, -1, -1),
             "untrained decoder": fresh}
    return {name: data.to_uint8(x) for name, x in cases.items()}


# Each metric a verdict may use, the word it stands for, and the check it must pass on the known cases
# (fixed before any model is scored). ``s`` maps case name -> score_samples(...) of that case.
METRIC_CHECKS: dict[str, tuple[str, str, Callable[[dict], bool]]] = {
    "fid": ("clearer / closer to real digits (lower)",
            "real digits score under 1/5 of blurred, one-class, mean-digit and untrained-decoder sets",
            lambda s: all(s["real"]["fid"] * 5 < s[c]["fid"]
                          for c in ("blurred", "one class", "mean digit", "untrained decoder"))),
    "recognisability": ("recognisable (higher)",
                        "real digits score 0.1 above the untrained decoder and the one-class set",
                        lambda s: all(s["real"]["recognisability"] > s[c]["recognisability"] + 0.1
                                      for c in ("untrained decoder", "one class"))),
    "sharpness_gap": ("sharper (lower: edge energy nearer real digits')",
                      "real digits' gap is under 1/4 of the blurred and the speckled sets'",
                      lambda s: all(s["real"]["sharpness_gap"] * 4 < s[c]["sharpness_gap"]
                                    for c in ("blurred", "speckled"))),
    "sharpness_gap_binarised": ("sharper in shape (lower: the same gap after thresholding every image at 0.5)",
                                "real digits' gap is under 1/4 of the blurred and the speckled sets'",
                                lambda s: all(s["real"]["sharpness_gap_binarised"] * 4 < s[c]["sharpness_gap_binarised"]
                                              for c in ("blurred", "speckled"))),
    "stroke_brightness": ("darker (lower)", "dimmed digits score 0.2 below real digits",
                          lambda s: s["dimmed"]["stroke_brightness"] < s["real"]["stroke_brightness"] - 0.2),
    "greyness": ("crisper (lower: less grey between black and white)", "blurred digits score 0.05 above real digits",
                 lambda s: s["blurred"]["greyness"] > s["real"]["greyness"] + 0.05),
    "superimposed": ("superimposed digits (mean-digit similarity > 0.9 and pixel spread < 0.1)",
                     "the mean-digit set is superimposed; real and one-class digits are not",
                     lambda s: is_superimposed(s["mean digit"]) and not is_superimposed(s["real"])
                     and not is_superimposed(s["one class"])),
}


def check_metrics(clf: Classifier, test_images, n: int, seed: int = 0) -> tuple[dict[str, bool], dict[str, dict]]:
    """Score every known case and run METRIC_CHECKS: ({metric: passed}, {case: scores}), kept by ``store.memo``."""
    scores = memo("metric-checks", {"classifier": digest(clf), "test": digest(test_images), "n": n, "seed": seed},
                  lambda: {c: score_samples(clf, x, test_images) for c, x in known_cases(n, test_images, seed).items()})
    return {m: bool(check(scores)) for m, (_, _, check) in METRIC_CHECKS.items()}, scores


def restoration_checks(clean, seed: int = 0) -> tuple[dict[str, bool], dict[str, dict]]:
    """The known-case check of PSNR and SSIM (what (g) is judged on): each passes when it ranks 10 % salt-and-
    pepper above 80 % and a blurred copy (σ = 1 px) above a black image, by 3 dB (PSNR) or 0.1 (SSIM)."""
    x = as_float(clean).cpu()
    cases = {"10 % noise": noise.salt_and_pepper(x, 0.1, generator=generator(seed + 7)),
             "80 % noise": noise.salt_and_pepper(x, 0.8, generator=generator(seed + 8)),
             "blurred digits": _blur(x), "black image": torch.zeros_like(x)}
    s = {name: psnr_ssim(images, x) for name, images in cases.items()}
    ok = {m: s["10 % noise"][m] > s["80 % noise"][m] + d and s["blurred digits"][m] > s["black image"][m] + d
          for m, d in (("psnr", 3.0), ("ssim", 0.1))}
    return ok, s
