from durations import add_months, days_in_month, format_duration, is_leap_year, parse_duration


def test_parse_duration():
    assert parse_duration("1h30m") == 5400
    assert parse_duration(" 2d 4h ") == 187200
    assert parse_duration("45S") == 45
    for bad in ("", "10", "1x", "1h nonsense"):
        try:
            parse_duration(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{bad!r} must be refused")


def test_format_duration():
    assert format_duration(5400) == "1h30m"
    assert format_duration(0) == "0s"
    assert format_duration(90061) == "1d1h1m1s"
    assert parse_duration(format_duration(187200)) == 187200


def test_calendar():
    assert is_leap_year(2024) and is_leap_year(2000)
    assert not is_leap_year(1900) and not is_leap_year(2023)
    assert days_in_month(2023, 2) == 28 and days_in_month(2024, 2) == 29
    assert days_in_month(2024, 4) == 30 and days_in_month(2024, 12) == 31


def test_add_months():
    assert add_months(2024, 1, 31, 1) == (2024, 2, 29)
    assert add_months(2023, 11, 15, 3) == (2024, 2, 15)
    assert add_months(2024, 3, 31, -1) == (2024, 2, 29)
