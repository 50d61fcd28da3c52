"""The simulated provider's settings schema and the example fault files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import ConfigError
from gateway.providers.simulated.server import load_settings_file
from gateway.providers.simulated.settings import Fault, SimulatedSettings

FAULT_FILES = sorted((Path(__file__).parents[2] / "configs" / "faults").glob("*.yaml"))


def test_durations_are_parsed_from_human_strings() -> None:
    """latency, delay, retry_after, start and end accept '250ms' / '2s'."""
    settings = SimulatedSettings.model_validate(
        {
            "latency": "250ms",
            "faults": [{"kind": "status", "status": 429, "retry_after": "2s", "start": "1s"}],
        }
    )
    assert settings.latency == 0.25
    assert settings.faults[0].retry_after == 2.0
    assert settings.faults[0].start == 1.0


def test_window_with_end_not_after_start_is_rejected() -> None:
    """end <= start is a configuration error that names both values."""
    with pytest.raises(ValidationError, match=r"end \(1s\) must be after start \(2s\)"):
        Fault(kind="refuse", start=2.0, end=1.0)


def test_refuse_without_a_time_window_is_rejected() -> None:
    """refuse closes the listener for a window; without start/end there is none to close."""
    with pytest.raises(ValidationError, match=r"`refuse` fault needs a time window: set `start`"):
        Fault(kind="refuse")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"rate": 0.5}, "`rate`"),
        ({"count": 1}, "`count`"),
        ({"after": 3}, "`after`"),
        ({"rate": 0.5, "count": 2, "after": 1}, "`rate`, `count`, `after`"),
    ],
    ids=["rate", "count", "after", "all"],
)
def test_refuse_with_request_conditions_is_rejected(extra: dict[str, float], named: str) -> None:
    """A closed listener cannot roll dice or count requests: rate/count/after are refused."""
    with pytest.raises(ValidationError, match=f"`refuse` fault cannot use {named}:"):
        Fault.model_validate({"kind": "refuse", "start": "1s", **extra})


@pytest.mark.parametrize("window", [{"start": "1s"}, {"end": "2s"}, {"start": 1, "end": 2}])
def test_refuse_with_a_window_is_accepted(window: dict[str, object]) -> None:
    """start and/or end is all a refuse fault needs; the defaults of rate/count/after pass."""
    fault = Fault.model_validate({"kind": "refuse", "rate": 1.0, "after": 0, **window})
    assert fault.windowed
    assert Fault.model_validate(fault.model_dump(mode="json")) == fault


def test_refuse_error_in_a_fault_file_names_file_line_and_path(tmp_path: Path) -> None:
    """A windowless refuse in a fault file is reported at the fault's line and path."""
    path = tmp_path / "bad.yaml"
    path.write_text("faults:\n  - kind: status\n  - kind: refuse\n    count: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings_file(str(path))
    assert str(info.value).startswith(f"{path}:3: faults[1]: ")
    assert "needs a time window" in str(info.value)


def test_unknown_fault_kind_is_rejected() -> None:
    """Only the documented kinds are accepted."""
    with pytest.raises(ValidationError):
        Fault.model_validate({"kind": "explode"})


def test_settings_round_trip_through_json() -> None:
    """model_dump(mode='json') validates back to the same settings."""
    settings = SimulatedSettings(
        latency=0.1,
        echo=True,
        faults=(Fault(kind="stream_stall", after_chunks=3, delay=0.5, rate=0.5, count=2),),
    )
    assert SimulatedSettings.model_validate(settings.model_dump(mode="json")) == settings


@pytest.mark.parametrize("path", FAULT_FILES, ids=lambda p: p.name)
def test_example_fault_file_is_valid(path: Path) -> None:
    """Every file in configs/faults/ loads as SimulatedSettings with at least one fault."""
    assert load_settings_file(str(path)).faults


def test_example_fault_files_exist() -> None:
    """The documented examples are shipped."""
    assert {"flaky.yaml", "streams.yaml", "outage.yaml"} <= {p.name for p in FAULT_FILES}


def test_bad_fault_file_error_names_file_line_and_path(tmp_path: Path) -> None:
    """A rejected file reports FILE:LINE: PATH: reason."""
    path = tmp_path / "bad.yaml"
    path.write_text("latency: 10ms\nfaults:\n  - kind: status\n    rate: 2\n")
    with pytest.raises(ConfigError) as info:
        load_settings_file(str(path))
    message = str(info.value)
    assert f"{path}:4: faults[0].rate:" in message
    assert "less than or equal to 1" in message


def test_fault_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    """A list at the top level is refused with a reason."""
    path = tmp_path / "list.yaml"
    path.write_text("- kind: reset\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings_file(str(path))


def test_empty_fault_file_means_default_settings(tmp_path: Path) -> None:
    """An empty file is the default behaviour with no faults."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_settings_file(str(path)) == SimulatedSettings()
