import pytest

from ddcore.verdicts import compare, noise, verdict_word


def test_noise_is_the_spread_of_a_difference():
    assert noise(3.0, 4.0) == pytest.approx(5.0)
    assert noise(0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    "diff, level, word",
    [
        (1.0, 1.0, "within noise"),
        (-1.0, 1.0, "within noise"),
        (1.01, 1.0, "better"),
        (-2.0, 1.0, "worse"),
        (0.0, 0.0, "within noise"),
    ],
)
def test_verdict_word(diff, level, word):
    assert verdict_word(diff, level) == word


def test_compare_reads_b_against_a():
    c = compare(90.0, 0.3, 92.0, 0.4)
    assert c.diff == pytest.approx(2.0) and c.noise == pytest.approx(0.5) and c.word == "better"
    assert str(c) == "+2.0 (noise 0.5, better)"
    assert compare(92.0, 0.4, 90.0, 0.3).word == "worse"
    assert compare(90.0, 2.0, 91.0, 2.0).word == "within noise"
