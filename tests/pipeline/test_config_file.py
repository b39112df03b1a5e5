"""The config file: options over PMON_* variables over pmon.toml over defaults; every error is one line, exit 2."""

from __future__ import annotations

import doctest
import json
import re
import tomllib
from pathlib import Path

import pytest

from monitor import config_file
from monitor.config_file import ConfigError, load_settings
from tests.helpers import one_line, run_pmon

ROOT = Path(__file__).resolve().parents[2]


def test_the_module_doctests_pass() -> None:
    assert doctest.testmod(config_file, optionflags=doctest.ELLIPSIS).failed == 0


def test_a_variable_outranks_the_file_and_an_option_outranks_both(tmp_path: Path) -> None:
    (tmp_path / "pmon.toml").write_text('alert_threshold = 0.1\nweb_port = 7001\nalert_kpi = "ctr"\n'
                                        '[roster."Testing Lead"]\npeople = ["Ana", "Ben"]\n')
    result = run_pmon("config", "show", "--json", cwd=tmp_path, env={"PMON_WEB_PORT": "7002"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["alert_threshold"] == {"value": 0.1, "source": "pmon.toml"}
    assert shown["web_port"] == {"value": 7002, "source": "env"}
    assert shown["roster"]["value"]["Testing Lead"]["people"] == ["Ana", "Ben"]
    assert shown["significance"]["source"] == "default"
    assert shown["pseudonym_key"]["value"] == "**********"
    text = run_pmon("config", "show", cwd=tmp_path).stdout
    assert re.search(r"^alert_kpi +=.*\"ctr\"\s+# pmon.toml$", text, re.M), text


def test_config_show_names_a_misspelt_variable_that_every_command_ignores(tmp_path: Path) -> None:
    result = run_pmon("config", "show", "--json", cwd=tmp_path, env={"PMON_BACH_SIZE": "5", "PMON_WEB_PORT": "7002"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "pmon config show: PMON_BACH_SIZE is not a setting and is ignored — did you mean PMON_BATCH_SIZE?"]
    shown = json.loads(result.stdout)  # stdout stays the settings alone
    assert shown["batch_size"]["source"] == "default" and shown["web_port"]["source"] == "env"


def test_an_option_outranks_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pmon.toml"
    path.write_text("alert_threshold = 0.1\n")
    monkeypatch.delenv("PMON_ALERT_THRESHOLD", raising=False)
    loaded = load_settings(path, overrides={"alert_threshold": 0.3, "plan_dir": None})
    assert loaded.settings.alert_threshold == 0.3 and loaded.sources["alert_threshold"] == "option"
    assert loaded.sources["plan_dir"] == "default"


def test_the_documented_example_is_a_valid_config(tmp_path: Path) -> None:
    """docs/configuration.md's example parses and validates: the documentation cannot drift from the settings."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "pmon.toml"
    path.write_text(example)
    settings = load_settings(path).settings
    assert settings.roster["Testing Lead"].people == ["Ana", "Ben"]
    assert settings.experiment_spec("onboarding-checklist", "PLG Onboarding").mde == 0.05
    assert set(tomllib.loads(example)) <= set(type(settings).model_fields)


@pytest.mark.parametrize(("content", "env", "expected"), [
    ("alert_threshold = [\n", {}, r"pmon\.toml: not valid TOML: .* — fix the syntax there"),
    ("alert_treshold = 0.1\n", {}, r"pmon\.toml: unknown key 'alert_treshold' — did you mean 'alert_threshold'\?"),
    ("alert_threshold = 2\n", {},
     r"pmon\.toml: key alert_threshold: Input should be less than 1 — fix it in pmon\.toml"),
    ('[roster."Testing Lead"]\npeople = ["Ana"]\nunavailable = { Zed = [[2026-11-01, 2026-11-02]] }\n', {},
     r"pmon\.toml: key roster\.\"Testing Lead\": .*'Zed'"),
    ("warmup_buckets = 100\n", {},
     r"invalid settings: warmup_buckets=100 exceeds baseline_buckets=72.* warmup_buckets \(pmon\.toml key"),
    ("", {"PMON_ALLOCATIONS": "{not json"}, r"PMON_ALLOCATIONS: not valid JSON — "),
    ("", {"PMON_WEB_PORT": "0"}, r"invalid setting PMON_WEB_PORT: .* — fix PMON_WEB_PORT"),
    ("", {"PMON_CONFIG": "missing.toml"}, r"config file missing\.toml does not exist — "),
])
def test_each_kind_of_bad_configuration_is_one_line_and_exit_2(tmp_path: Path, content: str, env: dict[str, str],
                                                                 expected: str) -> None:
    if content:
        (tmp_path / "pmon.toml").write_text(content)
    for command in (("config", "show"), ("monitor", "--initiative", "x", "--state", str(tmp_path / "state"))):
        result = run_pmon(*command, cwd=tmp_path, env=env)
        line = one_line(result.stderr)
        assert result.returncode == 2 and re.search(expected, line), line


def test_a_missing_explicit_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    result = run_pmon("--config", "nope.toml", "config", "show", cwd=tmp_path)
    assert result.returncode == 2 and "nope.toml does not exist" in one_line(result.stderr)


def test_every_setting_is_in_exactly_one_group_of_the_reference() -> None:
    from monitor.settings import SETTING_GROUPS, Settings

    grouped = [name for names in SETTING_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields), set(grouped) ^ set(Settings.model_fields)
