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


# ---- which file a profile name means (issue 14, item 9) -------------------------------------------


def test_a_profile_name_is_looked_up_in_the_working_directorys_slurm_folder_first(tmp_path, monkeypatch):
    project = tmp_path / "myproject"
    (project / "slurm").mkdir(parents=True)
    (project / "slurm" / "mine.yaml").write_text("partition: gpu\n")
    (project / "slurm" / "local.yaml").write_text("partition: elsewhere\n")  # shadows the package's
    monkeypatch.chdir(project)
    profile, where = load_profile("mine")
    assert profile.partition == "gpu" and where == str((project / "slurm" / "mine.yaml").resolve())
    profile, where = load_profile("local")
    assert profile.partition == "elsewhere" and where == str((project / "slurm" / "local.yaml").resolve())
    # a path is a path
    profile, where = load_profile(str(project / "slurm" / "mine.yaml"))
    assert profile.partition == "gpu"


def test_an_unknown_profile_names_every_folder_it_looked_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_profile("nope")
    text = str(info.value)
    assert f"{tmp_path.resolve() / 'slurm'}: no such folder" in text
    assert f"{PROFILES_DIR.resolve()}: " in text and "local" in text  # the package's own, with its names
