"""Evaluation: whole-set averages and IWAE (lib.bounds), classifier, Fréchet distance, coverage, image statistics."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lib import bounds, evaluate
from lib.data import generator
from lib.models import ConvVAE


class FakeVAE(nn.Module):
    """encode -> mu = per-image constant c, logvar = 0; the decoder ignores z and outputs logits L.

    Its per-image reconstruction and KL are known in closed form, and differ from image to image."""

    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def encode(self, x):
        c = x.flatten(1).mean(1, keepdim=True) * 10
        return c.expand(-1, 2).contiguous(), torch.zeros(len(x), 2)

    reparameterize = staticmethod(ConvVAE.reparameterize)

    def decode_logits(self, z):
        return torch.zeros(len(z), 1, 28, 28)


def test_test_bound_is_the_exact_mean_over_every_image_not_a_mean_of_batch_means():
    # 2,500 images in batches of 1,000: the last batch is smaller, so a mean of batch means would be wrong.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2_500, 1, 28, 28, generator=g) * torch.linspace(0, 1, 2_500).view(-1, 1, 1, 1)
    got = bounds.test_bound(FakeVAE(), x, "bce", batch_size=1_000)
    # BCE at logit 0 is log 2 per pixel whatever x is; KL = 1/2 * 2 * c^2 = c^2 per image.
    c = x.flatten(1).mean(1).double() * 10
    assert got["recon"] == pytest.approx(784 * math.log(2), rel=1e-6)
    assert got["kl"] == pytest.approx((c ** 2).mean().item(), rel=1e-6)
    batch_means = np.mean([(c[i:i + 1000] ** 2).mean().item() for i in range(0, 2500, 1000)])
    assert abs(batch_means - got["kl"]) > 1e-3, "the fixture must distinguish the two averages"
    assert got["bound"] == pytest.approx(got["recon"] + got["kl"])


def test_test_bound_beta_and_recon_weight():
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a = bounds.test_bound(FakeVAE(), x, "bce", beta=3.0, recon_weight=0.5)
    assert a["loss"] == pytest.approx(0.5 * a["recon"] + 3.0 * a["kl"])
    assert a["bound"] == pytest.approx(a["recon"] + a["kl"])


def test_a_denoising_vaes_bounds_score_the_target_not_the_input():
    """target=: the reconstruction term is -log p(target|z) with z ~ q(z|noisy input); without it, the input."""
    g = torch.Generator().manual_seed(3)
    clean = (torch.rand(12, 1, 28, 28, generator=g) > 0.7).float()
    noisy = clean.clone()
    noisy[:, :, ::3, ::3] = 1.0  # salt
    torch.manual_seed(0)
    vae = ConvVAE(latent_dim=4).eval()
    same = bounds.test_bound(vae, noisy, "bce", generator=generator(1), target=noisy)
    assert same == bounds.test_bound(vae, noisy, "bce", generator=generator(1)), "target=x is the default"
    to_clean = bounds.test_bound(vae, noisy, "bce", generator=generator(1), target=clean)
    assert to_clean["kl"] == same["kl"], "the code comes from the input either way"
    # by hand: encode the noisy input, decode, score the clean digits
    mu, logvar = vae.encode(noisy)
    logits = vae.decode_logits(vae.reparameterize(mu, logvar, generator(1)))
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, clean, reduction="sum").item() / 12
    assert to_clean["recon"] == pytest.approx(want, rel=1e-5) and to_clean["recon"] != pytest.approx(same["recon"])
    lw = bounds.log_weights(vae, noisy, 3, generator(2), target=clean)
    assert lw.shape == (12, 3)
    assert not torch.allclose(lw, bounds.log_weights(vae, noisy, 3, generator(2)))
    per = bounds.iwae_bound(vae, noisy, 3, generator(2), per_image=True, show_progress=False, target=clean)
    torch.testing.assert_close(per, -(torch.logsumexp(lw.double(), 1) - math.log(3)))


@pytest.fixture(scope="module")
def small_vae():
    torch.manual_seed(0)
    return ConvVAE(latent_dim=4).eval()


def test_iwae_with_k1_is_the_single_sample_elbo(small_vae):
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    lw = bounds.log_weights(small_vae, x, 1, generator(3))
    assert bounds.iwae_bound(small_vae, x, 1, generator(3), show_progress=False) == pytest.approx(-lw.double().mean().item(), rel=1e-6)
    # its expectation is the ELBO: average many single-sample estimates vs the closed-form-KL bound
    many = torch.stack([bounds.log_weights(small_vae, x, 1, generator(100 + i))[:, 0] for i in range(400)])
    elbo = -bounds.test_bound(small_vae, x, "bce", generator=generator(5))["kl"]
    recon = torch.stack([bounds._per_image_terms(small_vae, x, "bce", generator(900 + i))[0] for i in range(400)])
    assert (-many.mean()).item() == pytest.approx((recon.mean() - elbo).item(), rel=2e-3)


def test_iwae_is_not_below_the_elbo_and_tightens_with_k(small_vae):
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    b1 = np.mean([bounds.iwae_bound(small_vae, x, 1, generator(10 + i), show_progress=False) for i in range(20)])
    b10 = np.mean([bounds.iwae_bound(small_vae, x, 10, generator(50 + i), show_progress=False) for i in range(20)])
    b50 = bounds.iwae_bound(small_vae, x, 50, generator(99), show_progress=False)
    assert b10 <= b1 and b50 <= b10 + 0.5  # negative bounds: smaller = tighter


def test_iwae_per_image_values_average_to_the_scalar_bound(small_vae):
    """per_image=True: one double per image, on the CPU, whose mean is the scalar result from the same
    generator state. 25 images in chunks of 10, 10 and 5: a mean of chunk means would differ."""
    x = torch.rand(25, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    kw = dict(k=5, chunk_decodes=50, show_progress=False)
    per = bounds.iwae_bound(small_vae, x, generator=generator(8), per_image=True, **kw)
    scalar = bounds.iwae_bound(small_vae, x, generator=generator(8), **kw)
    assert isinstance(scalar, float)
    assert per.shape == (25,) and per.dtype == torch.float64 and per.device.type == "cpu"
    assert per.mean().item() == pytest.approx(scalar, rel=1e-12)
    # each value is that image's own k-sample estimate -log (1/k) sum_j w_j, in image order
    g = generator(8)
    lw = torch.cat([bounds.log_weights(small_vae, x[i:i + 10], 5, g) for i in range(0, 25, 10)])
    torch.testing.assert_close(per, -(torch.logsumexp(lw.double(), 1) - math.log(5)), rtol=1e-6, atol=1e-6)
    assert per.std() > 0, "images differ, so must their bounds"
    chunk_means = torch.stack([per[i:i + 10].mean() for i in range(0, 25, 10)]).mean().item()
    assert abs(chunk_means - scalar) > 1e-6, "the fixture must tell the mean over images from a mean of chunk means"


@pytest.fixture(scope="module")
def classifier(mnist_raw):
    return evaluate.get_classifier("full")


def test_classifier_reaches_99_percent(classifier):
    _, acc = classifier
    assert acc >= 0.99


def test_fid_zero_on_itself_symmetric_and_grows_with_degradation(classifier):
    from lib import data

    clf, _ = classifier
    test = data.load_split("test").float_images()
    a, b = test[:2000], test[2000:4000]
    assert evaluate.classifier_fid(clf, a, a) == pytest.approx(0.0, abs=1e-3)  # vs ~1e1-1e3 for real gaps
    assert evaluate.classifier_fid(clf, a, b) == pytest.approx(evaluate.classifier_fid(clf, b, a), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    fids = [evaluate.classifier_fid(clf, a, (b + s * torch.randn(b.shape, generator=g)).clamp(0, 1))
            for s in (0.0, 0.2, 0.5)]
    assert fids[0] < fids[1] < fids[2]
    blurred = torch.nn.functional.avg_pool2d(b, 3, stride=1, padding=1)
    assert evaluate.classifier_fid(clf, a, blurred) > fids[0]


def test_frechet_distance_matches_the_gaussian_formula():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=3), rng.normal(size=3)
    s1 = np.diag([1.0, 2.0, 3.0])
    s2 = np.diag([2.0, 2.0, 0.5])
    expected = ((m1 - m2) ** 2).sum() + sum(a + b - 2 * np.sqrt(a * b) for a, b in zip([1, 2, 3], [2, 2, 0.5]))
    assert evaluate.frechet_distance((m1, s1), (m2, s2)) == pytest.approx(expected, rel=1e-9)


def test_coverage_of_real_digits_and_of_a_single_class(classifier):
    from lib import data

    clf, _ = classifier
    test = data.load_split("test")
    cov = evaluate.coverage(evaluate.predict_proba(clf, test.float_images()[:2000]))
    assert cov["min_class_share"] > 0.07 and cov["class_entropy"] > 0.99 * math.log(10)
    ones = test.float_images()[test.labels == 1][:300]
    cov1 = evaluate.coverage(evaluate.predict_proba(clf, ones))
    assert cov1["min_class_share"] == 0.0 and cov1["class_entropy"] < 0.2 and cov1["recognisability"] > 0.9


def test_image_stats_measure_blur_and_faintness():
    from lib import data

    x = data.load_split("test").float_images()[:500]
    sharp = evaluate.image_stats(x)
    blurred = evaluate.image_stats(torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1))
    faint = evaluate.image_stats(x * 0.5)
    assert blurred["gradient_energy"] < sharp["gradient_energy"] and blurred["greyness"] > sharp["greyness"]
    assert faint["stroke_brightness"] == pytest.approx(0.5 * sharp["stroke_brightness"], rel=1e-6)


# --- issue 14: validated metrics, FID with its spread, PSNR that is never inf ------------------------

def test_frechet_distance_agrees_with_torchmetrics_fid():
    """The project's Fréchet distance against a maintained implementation (torchmetrics' FID with a custom
    feature extractor standing in for the classifier)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(784, 12)

        def forward(self, x):
            # torchmetrics probes the extractor once with a 3 x 299 x 299 dummy image: take the first 784 values
            return torch.tanh(self.proj(x.flatten(1)[:, :784].float()))

    torch.manual_seed(0)
    feat = Features()
    real = torch.rand(600, 1, 28, 28)
    fake = (torch.rand(600, 1, 28, 28) * 0.7 + 0.2)
    tm = FrechetInceptionDistance(feature=feat)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    with torch.no_grad():
        ours = evaluate.frechet_distance(evaluate.gaussian_stats(feat(real).double()),
                                         evaluate.gaussian_stats(feat(fake).double()))
    assert ours > 0.01
    assert float(tm.compute()) == pytest.approx(ours, rel=2e-3)


def test_psnr_is_pooled_and_never_inf():
    clean = torch.rand(20, 1, 28, 28)
    same = evaluate.psnr_ssim(clean, clean)
    assert same["psnr"] is None and same["mse"] == 0.0 and same["ssim"] == pytest.approx(1.0)
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    out = evaluate.psnr_ssim(noisy, clean)
    mse = ((noisy.double() - clean.double()) ** 2).mean().item()
    assert out["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    assert 0 < out["psnr_se"] < 1 and 0 < out["ssim"] < 1


def test_median_filter_removes_isolated_salt():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1.0
    assert evaluate.median_filter(x).abs().max().item() == 0.0
    block = torch.zeros(1, 1, 28, 28)
    block[0, 0, 5:15, 5:15] = 1.0
    assert evaluate.median_filter(block)[0, 0, 8, 8].item() == 1.0, "a solid stroke survives"


def test_restoration_check_ranks_light_noise_above_heavy_and_blur_above_black():
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(20, 1, 28, 28)
    clean[:, :, 8:20, 12:16] = 1.0  # a bar per image: a crude digit
    clean = (clean + 0.1 * torch.rand(clean.shape, generator=g)).clamp(0, 1)
    ok, scores = evaluate.restoration_checks(clean)
    assert ok == {"psnr": True, "ssim": True}
    assert scores["10 % noise"]["psnr"] > scores["80 % noise"]["psnr"] + 3


def test_binarised_sharpness_gap_ignores_grey_point_summaries():
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0
    grey = x * 0.7 + 0.1  # the same shapes as a grey point summary
    assert evaluate.image_stats(grey)["gradient_energy"] != pytest.approx(evaluate.image_stats(x)["gradient_energy"])
    ref = evaluate._ref_energy(x, True)
    binary = (evaluate.as_float(grey) >= 0.5).float()
    assert evaluate.image_stats(binary)["gradient_energy"] == pytest.approx(ref)

def test_superimposed_rule_on_known_images():
    real = torch.rand(100, 1, 28, 28)
    mean = real.mean(0, keepdim=True).expand(100, -1, -1, -1)
    assert evaluate.is_superimposed(evaluate.superimposed(mean, real))
    assert not evaluate.is_superimposed(evaluate.superimposed(real, real))


def test_metric_checks_catch_a_metric_that_does_not_measure_its_word():
    """The checks are computed from known-case scores: a fake set of scores where recognisability cannot tell
    real digits from an untrained decoder must fail its check, and FID that ranks them properly must pass."""
    base = {"fid": 5.0, "recognisability": 0.9, "sharpness_gap": 0.001, "sharpness_gap_binarised": 0.002, "stroke_brightness": 0.97,
            "greyness": 0.08, "mean_digit_similarity": 0.6, "pixel_spread": 1.0}
    scores = {c: dict(base) for c in ("real", "blurred", "speckled", "dimmed", "one class", "mean digit",
                                      "untrained decoder")}
    for c in ("blurred", "one class", "mean digit", "untrained decoder"):
        scores[c]["fid"] = 100.0
    scores["blurred"].update(sharpness_gap=0.05, greyness=0.2)
    scores["speckled"]["sharpness_gap"] = 0.2
    scores["blurred"]["sharpness_gap_binarised"] = 0.006  # thresholding undoes most of the blur: under 4x real's
    scores["speckled"]["sharpness_gap_binarised"] = 0.2
    scores["dimmed"]["stroke_brightness"] = 0.6
    scores["mean digit"].update(mean_digit_similarity=1.0, pixel_spread=0.0)
    scores["one class"]["pixel_spread"] = 0.5
    ok = {m: check(scores) for m, (_, _, check) in evaluate.METRIC_CHECKS.items()}
    assert ok == {"fid": True, "recognisability": False, "sharpness_gap": True, "sharpness_gap_binarised": False,
                  "stroke_brightness": True, "greyness": True, "superimposed": True}
    scores["blurred"]["sharpness_gap_binarised"] = 0.015
    assert evaluate.METRIC_CHECKS["sharpness_gap_binarised"][2](scores)
    scores["untrained decoder"]["fid"] = 10.0  # an FID that barely separates them fails
    assert not evaluate.METRIC_CHECKS["fid"][2](scores)


def test_known_cases_are_what_they_say(tmp_path):
    test = torch.rand(300, 1, 28, 28)
    cases = evaluate.known_cases(150, test)
    assert set(cases) == {"real", "blurred", "speckled", "dimmed", "one class", "mean digit", "untrained decoder"}
    assert all(v.shape == (150, 28, 28) and v.dtype == torch.uint8 for v in cases.values())
    real = cases["real"].float()
    assert (cases["dimmed"].float() <= real * 0.6 + 1).all()
    assert (cases["mean digit"] == cases["mean digit"][0]).all()


def test_fid_and_se_of_a_set_against_itself_is_near_zero():
    clf, _ = evaluate.get_classifier("smoke", "cpu", show_progress=False)
    x = torch.rand(400, 1, 28, 28)
    fid, se = evaluate.fid_and_se(clf, x, evaluate.gaussian_stats(evaluate.features(clf, x)), rounds=10)
    assert abs(fid) < 1e-6 and se > 0


def test_decoder_gets_no_gradient_without_the_reconstruction_term():
    torch.manual_seed(0)
    vae = ConvVAE(latent_dim=4)
    decoder_grad, n, mu_grad = evaluate.decoder_gradient_without_recon(vae, torch.rand(8, 1, 28, 28))
    assert decoder_grad == 0.0 and mu_grad > 0
    assert n == sum(p.numel() for p in [*vae.get_temp.parameters(), *vae.decoder.parameters()])


def test_restoration_baselines_score_the_input_the_median_filter_and_the_best_blank():
    from lib import noise

    clean = torch.zeros(6, 1, 28, 28)
    clean[:, :, 8:20, 12:16] = 1.0
    noisy = noise.salt_and_pepper(clean, 0.1, generator=generator(0))
    out, best = evaluate.restoration_baselines(noisy, clean, 0.9 * clean.repeat(3, 1, 1, 1))
    assert list(out) == ["noisy input", "3 × 3 median filter", f"best blank image ({best})"]
    assert out["noisy input"] == evaluate.psnr_ssim(noisy, clean)
    assert out["3 × 3 median filter"] == evaluate.psnr_ssim(evaluate.median_filter(noisy), clean)
    assert best == "mean digit" and out["best blank image (mean digit)"]["psnr"] > out["noisy input"]["psnr"]
