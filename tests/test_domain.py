import pytest

from harmonizers.domain import ScannerDomain, nominal_field_strength, normalize_manufacturer


@pytest.mark.parametrize(
    ("raw", "vendor"),
    [
        ("GE MEDICAL SYSTEMS", "GE"),
        ("SIEMENS", "SIEMENS"),
        ("Siemens Healthcare GmbH", "SIEMENS"),
        ("Philips", "PHILIPS"),
        ("Philips Medical Systems", "PHILIPS"),
        ("TOSHIBA_MEC", "CANON"),
        ("  ge medical systems ", "GE"),
        ("Acme Imaging", None),
        ("", None),
        (None, None),
    ],
)
def test_manufacturer_is_normalized_to_the_vendor_stem(raw: str | None, vendor: str | None) -> None:
    assert normalize_manufacturer(raw) == vendor


@pytest.mark.parametrize(
    ("raw", "tesla"),
    [("1.5", 1.5), ("1.494", 1.5), ("3", 3.0), ("3.0", 3.0), (3, 3.0), ("15000", 1.5),
     ("30000", 3.0), ("", None), (None, None), ("abc", None), ("0", None)],
)
def test_field_strength_is_normalized_to_a_nominal_field(raw: object, tesla: float | None) -> None:
    assert nominal_field_strength(raw) == tesla


def test_domain_names_round_trip() -> None:
    for name in ("ge-1.5t", "siemens-3t", "philips-1.5t"):
        assert ScannerDomain.parse(name).name == name
    with pytest.raises(ValueError, match="not a scanner domain"):
        ScannerDomain.parse("ge 1.5")
