"""lib.claims: the declared table of the course report's claims and the rule that labels each sub-claim."""
import json

import pytest

from harness.notebook import findings_markdown, gate_markdown, save_findings
from lib import claims
from lib.claims import CLAIMS, judge

KNOWN = {"real": {"sharpness_gap": 0.001, "sharpness_gap_binarised": 0.002, "stroke_brightness": 0.95, "greyness": 0.10,
                  "fid": 2.0},
         "blurred": {"sharpness_gap": 0.051, "sharpness_gap_binarised": 0.015, "stroke_brightness": 0.80, "greyness": 0.30,
                     "fid": 102.0},
         "dimmed": {"stroke_brightness": 0.55}}
CHECKS = {"sharpness_gap": True, "sharpness_gap_binarised": True, "stroke_brightness": True, "greyness": True, "fid": True}


def seeds(metric, values, first=0):
    return [{metric: v, "seed": first + i} for i, v in enumerate(values)]


def label(found, sub_id):
    return next(f for f in found if f.id == sub_id).label


def test_every_tested_subclaim_names_a_metric_with_a_floor_and_two_arms():
    for letter, claim in CLAIMS.items():
        for s in claim.subs:
            assert s.id.startswith(letter)
            if s.kind == "test":
                assert s.metric in claims.SEPARATION and s.a and s.b and s.better in ("lower", "higher")
            else:
                assert s.kind in ("construction", "untestable")


def test_floor_is_a_tenth_of_the_known_case_separation():
    fl = claims.floors(KNOWN)
    assert fl["stroke_brightness"] == pytest.approx(0.1 * 0.40)
    assert fl["fid"] == pytest.approx(10.0)
    assert fl["test_recon"] == 0.5
    assert fl["sharpness_gap_binarised"] == pytest.approx(0.1 * 0.013), "the binarised control has its own known cases"
    assert claims.floors({"real": {"fid": 2.0}, "blurred": {"fid": 102.0}})["fid_inverted"] == pytest.approx(10.0), \
        "a derived metric without known-case scores of its own uses its parent's"


def test_a_clear_paired_gain_above_the_floor_is_kept():
    scores = {"β=2": seeds("fid", [100.0, 101.0, 99.0]), "β=1": seeds("fid", [140.0, 142.0, 139.0])}
    found = judge("d", scores, CHECKS, KNOWN)
    assert label(found, "d1") == "kept"
    assert "paired t" in next(f for f in found if f.id == "d1").deciding


def test_the_other_way_is_refuted_and_a_small_real_difference_is_refuted_by_the_floor():
    scores = {"β=2": seeds("fid", [184.0, 188.6, 192.9]), "β=1": seeds("fid", [140.9, 146.9, 141.9])}
    assert label(judge("d", scores, CHECKS, KNOWN), "d1") == "refuted"
    # MSE darker by 0.004 with a tight spread: real, but a tenth of the floor (0.04)
    scores = {"MSE": seeds("stroke_brightness", [0.900, 0.901, 0.899]),
              "BCE": seeds("stroke_brightness", [0.904, 0.905, 0.903])}
    found = judge("b", scores, CHECKS, KNOWN)
    assert label(found, "b1") == "refuted" and found[0].deciding.endswith("a gain as large as the floor is ruled out")


def test_kept_needs_the_whole_interval_above_the_floor_not_just_the_gain():
    """test_recon's floor is 0.5 nats; d4 alone is tested here (95 %, paired, df 2)."""
    beta2 = seeds("test_recon", [90.0, 90.0, 90.0])
    clear = {"β=2": beta2, "β=1": seeds("test_recon", [90.7, 90.8, 90.9])}  # gain 0.8 ± 0.25: [0.55, 1.05]
    assert label(judge("d", clear, CHECKS, KNOWN), "d4") == "kept"
    wide = {"β=2": beta2, "β=1": seeds("test_recon", [90.5, 90.8, 91.1])}  # gain 0.8 ± 0.75: [0.05, 1.55]
    d4 = judge("d", wide, CHECKS, KNOWN)[0]
    assert d4.label == "inconclusive" and d4.deciding.endswith("the gain clears the floor, its interval does not")


def test_a_noisy_comparison_is_inconclusive():
    scores = {"β=2": seeds("fid", [100.0, 160.0, 130.0]), "β=1": seeds("fid", [150.0, 110.0, 170.0])}
    assert label(judge("d", scores, CHECKS, KNOWN), "d1") == "inconclusive"


def test_a_metric_that_failed_its_check_decides_nothing():
    scores = {"β=2": seeds("fid", [100.0, 101.0, 99.0]), "β=1": seeds("fid", [140.0, 142.0, 139.0])}
    found = judge("d", scores, {**CHECKS, "fid": False}, KNOWN)
    assert label(found, "d1") == "inconclusive" and "failed its known-case check" in found[0].deciding


def test_a_one_seed_arm_is_judged_on_the_t_interval_of_plausible_x_the_largest_seed_sd_at_its_df():
    from scipy import stats as st

    from lib.claims import PLAUSIBLE
    assert PLAUSIBLE == 5
    bce = seeds("stroke_brightness", [0.95, 0.96, 0.94])  # SD 0.01 from 3 seeds: 2 df
    half = st.t.ppf(0.975, 2) * 5 * 0.01 * (1 + 1 / 3) ** 0.5  # f has one tested sub-claim: 95 %; √(1/1 + 1/3)
    assert half == pytest.approx(0.2484, abs=1e-4)
    far = {"no KL": seeds("stroke_brightness", [0.60]), "BCE": bce}
    f1 = next(f for f in judge("f", far, CHECKS, KNOWN) if f.id == "f1")
    assert f1.label == "kept"
    assert f"[{0.35 - half:+.3f}, {0.35 + half:+.3f}]" in f1.deciding
    assert "t(2 df, 95.0%) x √(1/1 + 1²/3) x 5 x the largest seed SD of this metric here, BCE's 0.01" in f1.deciding
    n = f1.numbers
    assert n["borrowed_from"] == "BCE" and n["sd_factor"] == 5 and n["df"] == 2 and n["a"] == [0.6]
    assert n["lo"] == pytest.approx(0.35 - half) and n["floor"] == pytest.approx(0.04)
    # 0.85: gain 0.10 clears the floor 0.04 and would be kept on the measured SD alone (half-width 0.05), not on 5x it
    assert label(judge("f", {"no KL": seeds("stroke_brightness", [0.85]), "BCE": bce}, CHECKS, KNOWN), "f1") == "inconclusive"
    two = seeds("stroke_brightness", [0.95, 0.96])  # 1 df: 12.7 x 5 x 0.0071 x √(1/1 + 1/2): the interval is ± 0.55
    assert label(judge("f", {"no KL": seeds("stroke_brightness", [0.60]), "BCE": two}, CHECKS, KNOWN), "f1") == "inconclusive"
    assert label(judge("f", {"no KL": seeds("stroke_brightness", [0.20]), "BCE": two}, CHECKS, KNOWN), "f1") == "kept"
    alone = {"no KL": seeds("stroke_brightness", [0.60]), "BCE": seeds("stroke_brightness", [0.95])}
    assert label(judge("f", alone, CHECKS, KNOWN), "f1") == "inconclusive", "no seed SD anywhere: nothing decided"


def test_a_one_seed_arm_against_an_exact_baseline_counts_only_its_own_borrowed_spread():
    psnr = {"noise 0%": seeds("psnr", [20.0, 20.5, 19.5]), "noise 10%": seeds("psnr", [19.0]),
            "median 10%": seeds("psnr", [18.0])}
    known = {"10 % noise": {"psnr": 20.0}, "80 % noise": {"psnr": 6.0}}  # floor 1.4 dB
    g2 = next(f for f in judge("g", psnr, {"psnr": True}, known) if f.id == "g2")
    assert "√(1/1)" in g2.deciding and "noise 0%'s 0.5" in g2.deciding
    from scipy import stats as st
    half = st.t.ppf(1 - 0.05 / 2 / 1, 2) * 5 * 0.5  # only g2 has its arms here: one tested sub-claim
    assert f"[{1.0 - half:+.2f}, {1.0 + half:+.2f}]" in g2.deciding and g2.label == "inconclusive"


def test_a_gan_and_a_vae_are_never_paired_by_seed_number():
    same = {"GAN": seeds("fid", [30.0, 35.0, 33.0]), "VAE": seeds("fid", [180.0, 185.0, 190.0])}
    c1 = judge("c", same, CHECKS, KNOWN)[0]
    assert c1.label == "kept" and "Welch t" in c1.deciding and "paired" not in c1.deciding
    d1 = judge("d", {"β=2": seeds("fid", [100.0, 101.0, 99.0]), "β=1": seeds("fid", [140.0, 142.0, 139.0])},
               CHECKS, KNOWN)[0]
    assert "paired t" in d1.deciding, "two β-VAEs of one seed share their start: paired"


def test_construction_and_untestable_subclaims_are_labelled_so_and_never_judged():
    scores = {"β=4": seeds("test_kl", [5.0, 5.1, 4.9]), "β=1": seeds("test_kl", [25.0, 25.2, 24.8])}
    found = judge("d", scores, CHECKS, KNOWN)
    assert [f.id for f in found] == ["d5"] and found[0].label == "holds by construction"
    f = judge("f", {}, CHECKS, KNOWN)
    assert {x.id: x.label for x in f} == {"f2": "untestable as stated"}, "f3 is shown in 04, where its numbers are"
    f3 = judge("f", {}, CHECKS, KNOWN, numbers={"f3": "β=50: KL 0.001 nats."}, where="04_beta_vae")
    assert [(x.id, x.label, x.deciding) for x in f3] == [("f3", "holds by construction", "β=50: KL 0.001 nats.")]
    assert [x.id for x in judge("f", {}, CHECKS, KNOWN, where="01_vae_basic")] == ["f2"]


def test_a_factor_scales_the_reference_arm():
    clean = seeds("fid_inverted", [100.0, 102.0, 98.0])
    ok = {"noise 10%": seeds("fid_inverted", [40.0]), "noise 0%": clean}
    bad = {"noise 10%": seeds("fid_inverted", [400.0]), "noise 0%": clean}
    assert label(judge("e", ok, CHECKS, KNOWN), "e2") == "kept"  # 40 far below 1.5 x 100, even on 5 x the SD
    assert label(judge("e", bad, CHECKS, KNOWN), "e2") == "refuted"


def test_markdown_ends_each_line_with_one_full_stop():
    found = [claims.Finding("f", "t", "f3", "x", "", "holds by construction", "a sentence.", "verdict-f3")]
    assert findings_markdown(found).rstrip().endswith("a sentence.") and ".." not in findings_markdown(found)


def test_bonferroni_widens_a_claims_intervals_with_its_number_of_subclaims():
    one = {"GAN": seeds("fid", [30.0, 35.0, 33.0]), "VAE": seeds("fid", [180.0, 185.0, 190.0])}
    c = judge("c", one, CHECKS, KNOWN)[0]
    assert "95.0%" in c.deciding
    d = judge("d", {"β=2": seeds("fid", [1.0, 2.0, 3.0]), "β=1": seeds("fid", [50.0, 52.0, 51.0]),
                    "β=3": seeds("fid", [50.0, 52.0, 51.0])}, CHECKS, KNOWN)
    assert "97.5%" in d[0].deciding, "two tested sub-claims: each at 1 - 0.05 / 2"


def test_markdown_and_save(tmp_path):
    found = judge("f", {"no KL": seeds("stroke_brightness", [0.6]), "BCE": seeds("stroke_brightness", [0.95, 0.96])},
                  CHECKS, KNOWN)
    text = findings_markdown(found)
    assert '<span id="verdict-f1"></span>' in text and "untestable as stated" in text
    path = save_findings(found, tmp_path, "01_vae_basic", "smoke")
    doc = json.loads(path.read_text())
    assert doc["notebook"] == "01_vae_basic" and doc["profile"] == "smoke"
    assert [s["id"] for s in doc["subclaims"]] == ["f1", "f2"]
    assert {"claim", "claim_text", "text", "metric", "label", "deciding", "anchor"} <= set(doc["subclaims"][0])


def test_gate_markdown_shows_the_known_cases_and_every_check():
    from lib import evaluate

    checks = {m: m != "greyness" for m in evaluate.METRIC_CHECKS}
    text = gate_markdown(checks, {c: KNOWN[c] for c in ("real", "blurred")}, ["fid", "greyness"])
    table, bullets = text.split("\n\n")
    assert table.splitlines()[:3] == ["| known case | fid | greyness |", "|---|---|---|", "| real | 2.0000 | 0.1000 |"]
    assert len(bullets.splitlines()) == len(evaluate.METRIC_CHECKS)
    assert "- **greyness** (crisper" in bullets and bullets.count("**fails** ✗ (enters no verdict)") == 1


def test_active_units_count_the_dimensions_whose_posterior_mean_moves_with_the_image():
    import torch

    from lib.evaluate import active_units
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(500, 4, generator=g) * torch.tensor([1.0, 0.5, 0.05, 0.0])  # variances 1, 0.25, 0.0025, 0
    assert active_units(mu) == 2
    assert active_units(mu, threshold=0.001) == 3
