"""SLURM profiles: every profile in slurm/ loads; mistakes are named."""

import pytest

from adaptconv.schema import ConfigError
from adaptconv.sweep.slurm import PROFILES_DIR, load_profile, time_to_minutes


def test_every_profile_in_the_repository_loads():
    names = sorted(PROFILES_DIR.glob("*.yaml"))
    assert names
    for path in names:
        profile, where = load_profile(path)
        assert where == str(path)


def test_profile_mistakes_are_named(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("partiton: gpu\ncpus_per_task: many\n")
    with pytest.raises(ConfigError) as info:
        load_profile(bad)
    text = str(info.value)
    assert "partiton: unknown key (did you mean 'partition'?)" in text and "cpus_per_task: expected int" in text
    with pytest.raises(ConfigError, match="no SLURM profile 'nope'"):
        load_profile("nope")


@pytest.mark.parametrize("text,minutes", [("00:05:00", 5), ("01:30:00", 90), ("1-00:00:00", 1440), ("00:00:30", 1)])
def test_time_limits(text, minutes):
    assert time_to_minutes(text) == minutes
