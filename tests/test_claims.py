"""lib.claims: the declared table of the course report's claims and the rule that labels each sub-claim."""
import json

import pytest

from lib import claims
from lib.claims import CLAIMS, judge

KNOWN = {"real": {"sharpness_gap": 0.001, "stroke_brightness": 0.95, "greyness": 0.10, "fid": 2.0},
         "blurred": {"sharpness_gap": 0.051, "stroke_brightness": 0.80, "greyness": 0.30, "fid": 102.0},
         "dimmed": {"stroke_brightness": 0.55}}
CHECKS = {"sharpness_gap": True, "stroke_brightness": True, "greyness": True, "fid": True}


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
    assert fl["sharpness_gap_binarised"] == pytest.approx(fl["sharpness_gap"]), "a control borrows its parent's cases"


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
    assert label(found, "b1") == "refuted" and "below the floor" in found[0].deciding


def test_a_noisy_comparison_is_inconclusive():
    scores = {"β=2": seeds("fid", [100.0, 160.0, 130.0]), "β=1": seeds("fid", [150.0, 110.0, 170.0])}
    assert label(judge("d", scores, CHECKS, KNOWN), "d1") == "inconclusive"


def test_a_metric_that_failed_its_check_decides_nothing():
    scores = {"β=2": seeds("fid", [100.0, 101.0, 99.0]), "β=1": seeds("fid", [140.0, 142.0, 139.0])}
    found = judge("d", scores, {**CHECKS, "fid": False}, KNOWN)
    assert label(found, "d1") == "inconclusive" and "failed its known-case check" in found[0].deciding


def test_one_seed_arm_needs_a_gap_beyond_clear_times_the_largest_seed_sd():
    bce = seeds("stroke_brightness", [0.95, 0.96, 0.94])  # SD 0.01: the band is ± 0.05
    far = {"no KL": seeds("stroke_brightness", [0.60]), "BCE": bce}
    near = {"no KL": seeds("stroke_brightness", [0.92]), "BCE": bce}
    assert label(judge("f", far, CHECKS, KNOWN), "f1") == "kept"
    assert "one-seed arm" in next(f for f in judge("f", far, CHECKS, KNOWN) if f.id == "f1").deciding
    assert label(judge("f", near, CHECKS, KNOWN), "f1") == "inconclusive"
    alone = {"no KL": seeds("stroke_brightness", [0.60]), "BCE": seeds("stroke_brightness", [0.95])}
    assert label(judge("f", alone, CHECKS, KNOWN), "f1") == "inconclusive", "no seed SD anywhere: nothing decided"


def test_construction_and_untestable_subclaims_are_labelled_so_and_never_judged():
    scores = {"β=4": seeds("test_kl", [5.0, 5.1, 4.9]), "β=1": seeds("test_kl", [25.0, 25.2, 24.8])}
    found = judge("d", scores, CHECKS, KNOWN)
    assert [f.id for f in found] == ["d5"] and found[0].label == "holds by construction"
    f = judge("f", {}, CHECKS, KNOWN)
    assert {x.id: x.label for x in f} == {"f2": "untestable as stated", "f3": "holds by construction"}


def test_a_factor_scales_the_reference_arm():
    clean = seeds("fid_inverted", [100.0, 102.0, 98.0])
    ok = {"noise 10%": seeds("fid_inverted", [110.0]), "noise 0%": clean}
    bad = {"noise 10%": seeds("fid_inverted", [400.0]), "noise 0%": clean}
    assert label(judge("e", ok, CHECKS, KNOWN), "e2") == "kept"  # 110 well below 1.5 x 100
    assert label(judge("e", bad, CHECKS, KNOWN), "e2") == "refuted"


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
    text = claims.markdown(found)
    assert '<span id="verdict-f1"></span>' in text and "untestable as stated" in text
    path = claims.save(found, tmp_path, "01_vae_basic", "smoke")
    doc = json.loads(path.read_text())
    assert doc["notebook"] == "01_vae_basic" and doc["profile"] == "smoke"
    assert [s["id"] for s in doc["subclaims"]] == ["f1", "f2", "f3"]
    assert {"claim", "claim_text", "text", "metric", "label", "deciding", "anchor"} <= set(doc["subclaims"][0])


def test_gate_markdown_shows_the_known_cases_and_every_check():
    from lib import evaluate

    checks = {m: m != "greyness" for m in evaluate.METRIC_CHECKS}
    text = claims.gate_markdown(checks, {c: KNOWN[c] for c in ("real", "blurred")}, ["fid", "greyness"])
    table, bullets = text.split("\n\n")
    assert table.splitlines()[:3] == ["| known case | fid | greyness |", "|---|---|---|", "| real | 2.0000 | 0.1000 |"]
    assert len(bullets.splitlines()) == len(evaluate.METRIC_CHECKS)
    assert "- **greyness** (crisper" in bullets and bullets.count("**fails** ✗ (enters no verdict)") == 1
