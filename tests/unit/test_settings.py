"""EnvReader: typed settings read once, failing fast with ConfigError naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from unibus.core.errors import ConfigError
from unibus.core.limits import read_history_max_age
from unibus.core.settings import EnvReader, parse_bool

NAME = "UNIBUS_TEST_SETTING"


def _env(value: str | None = None, **more: str) -> EnvReader:
    environ = dict(more)
    if value is not None:
        environ[NAME] = value
    return EnvReader(environ)


# -- parse_bool -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["1", "true", "yes", "on", "TRUE", "True", "Yes", "ON", " true ", "on\n"]
)
def test_parse_bool_accepts_true_spellings(raw: str) -> None:
    assert parse_bool(NAME, raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", "", "FALSE", "No", " off ", "  "])
def test_parse_bool_accepts_false_spellings(raw: str) -> None:
    assert parse_bool(NAME, raw) is False


@pytest.mark.parametrize("raw", ["2", "y", "n", "t", "f", "enabled", "truee", "-1", "1.0", "nope"])
def test_parse_bool_rejects_anything_else_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        parse_bool(NAME, raw)
    assert excinfo.value.setting == NAME


# -- EnvReader construction -----------------------------------------------------------------


def test_env_reader_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, "from-os")
    assert EnvReader().string(NAME) == "from-os"


def test_env_reader_takes_a_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, "before")
    reader = EnvReader()
    monkeypatch.setenv(NAME, "after")
    assert reader.string(NAME) == "before"


def test_env_reader_copies_the_mapping_it_is_given() -> None:
    environ = {NAME: "before"}
    reader = EnvReader(environ)
    environ[NAME] = "after"
    assert reader.string(NAME) == "before"


# -- raw / string ---------------------------------------------------------------------------


def test_raw_strips_whitespace() -> None:
    assert _env("  value \n").raw(NAME) == "value"


@pytest.mark.parametrize("value", [None, "", "   ", "\t\n"])
def test_raw_treats_unset_and_blank_as_none(value: str | None) -> None:
    assert _env(value).raw(NAME) is None


def test_string_returns_the_value() -> None:
    assert _env("hello").string(NAME, default="x") == "hello"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_string_uses_default_when_unset_or_blank(value: str | None) -> None:
    assert _env(value).string(NAME, default="fallback") == "fallback"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_string_required_and_missing_raises_config_error_naming_it(value: str | None) -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env(value).string(NAME)
    assert excinfo.value.setting == NAME


def test_optional_str_is_none_when_unset_and_value_when_set() -> None:
    assert _env().optional_str(NAME) is None
    assert _env(" v ").optional_str(NAME) == "v"


# -- boolean --------------------------------------------------------------------------------


@pytest.mark.parametrize("default", [True, False])
def test_boolean_uses_default_when_unset(default: bool) -> None:
    assert _env().boolean(NAME, default=default) is default


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("on", True), ("0", False)])
def test_boolean_parses_the_value(raw: str, expected: bool) -> None:
    assert _env(raw).boolean(NAME, default=not expected) is expected


def test_boolean_rejects_a_bad_value_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env("maybe").boolean(NAME, default=False)
    assert excinfo.value.setting == NAME


# -- integer --------------------------------------------------------------------------------


def test_integer_uses_default_when_unset() -> None:
    assert _env().integer(NAME, default=7) == 7


@pytest.mark.parametrize(("raw", "expected"), [("42", 42), (" 3 ", 3), ("-5", -5), ("0", 0)])
def test_integer_parses_the_value(raw: str, expected: int) -> None:
    assert _env(raw).integer(NAME, default=1) == expected


@pytest.mark.parametrize("raw", ["abc", "1.5", "1e3", "0x10", "3 apples", "nan"])
def test_integer_rejects_a_non_integer_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env(raw).integer(NAME, default=1)
    assert excinfo.value.setting == NAME


def test_integer_accepts_the_bounds_themselves() -> None:
    assert _env("1").integer(NAME, default=3, minimum=1, maximum=5) == 1
    assert _env("5").integer(NAME, default=3, minimum=1, maximum=5) == 5


@pytest.mark.parametrize(("raw", "word"), [("0", "minimum"), ("6", "maximum")])
def test_integer_rejects_values_outside_the_range(raw: str, word: str) -> None:
    with pytest.raises(ConfigError, match=word) as excinfo:
        _env(raw).integer(NAME, default=3, minimum=1, maximum=5)
    assert excinfo.value.setting == NAME
    assert NAME in str(excinfo.value)


def test_integer_default_is_not_range_checked() -> None:
    # The default is the code's own choice; only what the operator set is checked.
    assert _env().integer(NAME, default=0, minimum=1) == 0


# -- number ---------------------------------------------------------------------------------


def test_number_uses_default_when_unset() -> None:
    assert _env().number(NAME, default=2.0) == 2.0


@pytest.mark.parametrize(("raw", "expected"), [("2.5", 2.5), ("3", 3.0), ("1e-3", 0.001)])
def test_number_parses_the_value(raw: str, expected: float) -> None:
    assert _env(raw).number(NAME, default=1.0) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["fast", "1,5", "2.5s", "--1"])
def test_number_rejects_a_non_number_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env(raw).number(NAME, default=1.0)
    assert excinfo.value.setting == NAME


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999"])
def test_number_rejects_non_finite_values(raw: str) -> None:
    with pytest.raises(ConfigError, match="finite") as excinfo:
        _env(raw).number(NAME, default=1.0)
    assert excinfo.value.setting == NAME


def test_number_accepts_the_bounds_themselves() -> None:
    assert _env("0.1").number(NAME, default=1.0, minimum=0.1, maximum=10.0) == 0.1
    assert _env("10").number(NAME, default=1.0, minimum=0.1, maximum=10.0) == 10.0


@pytest.mark.parametrize(("raw", "word"), [("0.05", "minimum"), ("10.5", "maximum")])
def test_number_rejects_values_outside_the_range(raw: str, word: str) -> None:
    with pytest.raises(ConfigError, match=word) as excinfo:
        _env(raw).number(NAME, default=1.0, minimum=0.1, maximum=10.0)
    assert excinfo.value.setting == NAME


# -- paths ----------------------------------------------------------------------------------


def test_path_returns_an_existing_path(tmp_path: Path) -> None:
    assert _env(str(tmp_path)).path(NAME) == tmp_path


def test_path_missing_file_raises_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.creds"
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env(str(missing)).path(NAME)
    assert excinfo.value.setting == NAME


def test_path_without_must_exist_accepts_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "later.creds"
    assert _env(str(missing)).path(NAME, must_exist=False) == missing


def test_path_required_and_unset_raises_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env().path(NAME, must_exist=False)
    assert excinfo.value.setting == NAME


def test_path_expands_the_home_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _env("~/seed.nk").path(NAME, must_exist=False) == tmp_path / "seed.nk"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_optional_path_is_none_when_unset_or_blank(value: str | None) -> None:
    assert _env(value).optional_path(NAME) is None


def test_optional_path_returns_an_existing_path(tmp_path: Path) -> None:
    assert _env(str(tmp_path)).optional_path(NAME) == tmp_path


def test_optional_path_set_but_missing_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env(str(tmp_path / "nope")).optional_path(NAME)
    assert excinfo.value.setting == NAME


def test_optional_path_without_must_exist_accepts_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert _env(str(missing)).optional_path(NAME, must_exist=False) == missing


# -- items ----------------------------------------------------------------------------------


def test_items_uses_default_when_unset() -> None:
    assert _env().items(NAME) == ()
    assert _env().items(NAME, default=("a",)) == ("a",)


def test_items_splits_on_commas_and_strips_each_item() -> None:
    assert _env(" a , b,c ").items(NAME) == ("a", "b", "c")


def test_items_single_value_is_one_item() -> None:
    assert _env("only").items(NAME) == ("only",)


@pytest.mark.parametrize("raw", ["a,,b", "a,", ",a", "a, ,b"])
def test_items_rejects_an_empty_item_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match=NAME) as excinfo:
        _env(raw).items(NAME)
    assert excinfo.value.setting == NAME


def test_reader_ignores_other_variables() -> None:
    reader = _env(None, UNIBUS_OTHER="5")
    assert reader.integer(NAME, default=1) == 1
    assert reader.integer("UNIBUS_OTHER", default=1) == 5


def test_boolean_blank_value_falls_back_to_the_default_like_every_other_getter() -> None:
    env = EnvReader({"UNIBUS_FLAG": "  "})
    assert env.boolean("UNIBUS_FLAG", default=True) is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:9470", ("127.0.0.1", 9470)),
        ("[::1]:0", ("::1", 0)),
        ("node-a:8470", ("node-a", 8470)),
    ],
)
def test_host_port_splits_and_unbrackets(raw: str, expected: tuple[str, int]) -> None:
    assert EnvReader({"ADDR": raw}).host_port("ADDR", default="x:1") == expected


def test_host_port_uses_the_default_when_unset() -> None:
    assert EnvReader({}).host_port("ADDR", default="127.0.0.1:9471") == ("127.0.0.1", 9471)


@pytest.mark.parametrize("raw", ["9471", ":9471", "host:http", "host:70000", "host:-1"])
def test_host_port_refuses_anything_but_host_and_port_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="ADDR must be HOST:PORT") as caught:
        EnvReader({"ADDR": raw}).host_port("ADDR", default="x:1")
    assert caught.value.setting == "ADDR"


def test_the_history_retention_is_read_in_days_within_bounds() -> None:
    assert read_history_max_age(EnvReader({})) == 30 * 86_400
    assert read_history_max_age(EnvReader({"UNIBUS_HISTORY_DAYS": "7"})) == 7 * 86_400
    for refused in ("0.5", "3651", "a month"):
        with pytest.raises(ConfigError, match="UNIBUS_HISTORY_DAYS"):
            read_history_max_age(EnvReader({"UNIBUS_HISTORY_DAYS": refused}))
