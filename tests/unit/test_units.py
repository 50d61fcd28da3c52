"""Human durations and sizes in config files: what they mean and what is refused."""

from __future__ import annotations

import pytest

from gateway.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 10 s ", 10.0),
        ("45", 45.0),
        ("0s", 0.0),
        (5, 5.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_duration_is_converted_to_seconds(text: object, seconds: float) -> None:
    """Units ms/s/m/h scale the number; a bare number (or numeric string) is seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


def test_duration_returns_a_float_for_an_int() -> None:
    """An integer number of seconds comes back as a float, the type every timeout uses."""
    assert isinstance(parse_duration(3), float)


@pytest.mark.parametrize("value", ["5 parsecs", "soon", "", "1d", "ms", "1e3s", None, [1], {}])
def test_duration_that_is_not_one_names_the_accepted_forms(value: object) -> None:
    """Anything else is refused with a message that shows the accepted forms and the input."""
    with pytest.raises(ValueError, match=r"expected a duration such as '250ms'") as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [True, False])
def test_duration_refuses_booleans(value: bool) -> None:
    """YAML `yes`/`true` is not a duration, even though bool is an int in Python."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_negative_duration_is_refused(value: float) -> None:
    """A negative number of seconds is refused with its own message."""
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(value)


def test_negative_duration_text_is_refused() -> None:
    """A minus sign in text is not part of the duration syntax."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration("-5s")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10MiB", 10 * 1024 * 1024),
        ("512KB", 512_000),
        ("2KiB", 2048),
        ("1.5KiB", 1536),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("1GiB", 1024**3),
        ("100B", 100),
        ("100", 100),
        (" 4 KiB ", 4096),
        (4096, 4096),
    ],
)
def test_size_is_converted_to_bytes(text: object, size: int) -> None:
    """Decimal (KB, MB, GB) and binary (KiB, MiB, GiB) units; a bare number is bytes."""
    result = parse_size(text)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize("value", ["ten megs", "10 XB", "", "-1KB", None, 1.5, [1]])
def test_size_that_is_not_one_names_the_accepted_forms(value: object) -> None:
    """Anything else is refused with a message that shows an example and the input."""
    with pytest.raises(ValueError, match=r"expected a size such as '10MiB'") as info:
        parse_size(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [True, False])
def test_size_refuses_booleans(value: bool) -> None:
    """YAML `true` is not a size."""
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(value)


@pytest.mark.parametrize("value", [0, -1, "0", "0KiB", "0.1B"])
def test_size_must_be_positive(value: object) -> None:
    """Zero bytes (including a fraction that rounds down to zero) and negatives are refused."""
    with pytest.raises(ValueError, match="must be positive"):
        parse_size(value)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_infinite_or_nan_duration_is_refused(value: float) -> None:
    """YAML's `.inf` / `.nan` are floats; no window, probe or deadline may be endless."""
    with pytest.raises(ValueError, match="expected a finite duration"):
        parse_duration(value)
