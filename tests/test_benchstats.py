"""The benchmark's statistics on synthetic timings (no timing is measured here)."""

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # as scripts/benchmark.py imports it
import benchstats as bs  # noqa: E402


def test_median_and_quartiles_by_hand():
    s = bs.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.q1, s.q3, s.n) == (3.0, 2.0, 4.0, 5)
    assert s.half_iqr == 1.0
    assert s.cell() == "3.000 [2.000, 4.000]"
    assert bs.Spread(0.0123, -0.004, 0.05, 3).cell("+.1f", 100, "%") == "+1.2% [-0.4, +5.0]"
    # between order statistics: linear interpolation, as numpy's default
    assert bs.quantile([1.0, 2.0, 3.0, 4.0], 0.25) == pytest.approx(1.75)
    assert bs.quantile([7.0], 0.75) == 7.0
    with pytest.raises(ValueError):
        bs.quantile([], 0.5)


def test_ratios_pair_variants_within_rounds():
    assert bs.ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match="rounds differ"):
        bs.ratios([1.0], [1.0, 2.0])


def test_noise_floor_from_the_bare_loop_against_itself():
    bare = [10.0, 10.0, 10.0, 10.0, 10.0]
    again = [10.0, 10.2, 9.8, 10.4, 10.0]  # ratios 1, 1.02, 0.98, 1.04, 1: median 1, IQR 0.02
    assert bs.noise_floor(bare, again) == pytest.approx(0.01)
    shifted = [10.3, 10.3, 10.3, 10.3, 10.3]  # a systematic 3% between identical loops
    assert bs.noise_floor(bare, shifted) == pytest.approx(0.03)


def test_a_ratio_counts_only_outside_the_floor():
    inside = bs.spread([1.02, 1.03, 1.01, 1.04, 1.02])
    assert bs.verdict(inside, 0.03) == "within noise"
    outside = bs.spread([1.10, 1.12, 1.09, 1.11, 1.10])
    assert bs.verdict(outside, 0.03) == "10.0% slower"
    assert bs.verdict(bs.spread([0.9] * 5), 0.03) == "10.0% faster"


def test_rounds_stop_when_the_ratios_settle():
    noisy = [1.0, 1.2, 0.9, 1.3, 1.05]
    assert not bs.settled(noisy, tolerance=0.02, min_rounds=5)
    tight = [1.04, 1.05, 1.05, 1.06, 1.05]
    assert bs.settled(tight, tolerance=0.02, min_rounds=5)
    assert not bs.settled(tight[:4], tolerance=0.02, min_rounds=5)


def test_alternation_puts_every_variant_in_every_position():
    variants = ["genlab", "bare", "bare again"]
    orders = [bs.round_order(variants, r) for r in range(3)]
    assert orders[0] == variants
    for position in range(3):
        assert {order[position] for order in orders} == set(variants)
    assert bs.round_order(variants, 3) == variants


def test_loop_row_splits_genlab_time_outside_and_inside_its_steps():
    import benchmark

    genlab = [  # three rounds: 1, 1 and 2 ms/step outside steps of 10 ms
        {"ms": 11.0, "loop_ms": 1.0, "in_steps_ms": 10.0},
        {"ms": 11.0, "loop_ms": 1.0, "in_steps_ms": 10.0},
        {"ms": 12.0, "loop_ms": 2.0, "in_steps_ms": 10.0},
    ]
    bare = [{"ms": 10.0}, {"ms": 8.0}, {"ms": 10.0}]  # in-step / bare: 1, 1.25, 1
    row = benchmark.loop_row("vae_mlp", 1000, {"genlab": genlab, "bare": bare})
    cells = [c.strip() for c in row.strip("|").split("|")]
    # shares 10%, 10%, 20%: median 10, quartiles 10 and 15
    assert cells == [
        "vae_mlp",
        "1000",
        "1.00",
        "10.0% [10.0, 15.0]",
        "10.00",
        "1.000 [1.000, 1.125]",
    ]


def test_no_training_measures_nothing_for_a_model_without_sampling(tmp_path, monkeypatch):
    """`--no-training` leaves out the training comparison (and its rounds): a GAN then has no
    table at all, and no measurement process is started."""
    import benchmark

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should be measured")

    monkeypatch.setattr(benchmark, "measure", refuse)
    monkeypatch.setattr(benchmark, "run_rounds", refuse)
    out = tmp_path / "bench.md"
    argv = ["benchmark.py", "--models", "gan", "--no-training", "--no-scaling", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Machine: ")
    assert "rounds" not in lines[0]
