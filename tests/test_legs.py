"""`make test`'s Django 6 legs (devtools/test_legs.py): what each leg installs, and that a
machine without the leg's Python skips it, saying so, rather than failing or passing silently."""

from __future__ import annotations

from devtools import test_legs
from devtools.test_legs import LEGS, Leg, leg_requirements


def names(pins: list[str]) -> dict[str, str]:
    return {pin.split("==")[0].lower(): pin.split("==")[1] for pin in pins}


def test_each_leg_replaces_django_and_the_backport_and_keeps_every_other_pin():
    base = names(
        [line.split("#")[0].strip() for line in (test_legs.REQUIREMENTS / "base.txt").read_text().splitlines()
         if line.split("#")[0].strip()]
    )  # fmt: skip
    for leg, django in zip(LEGS, ("6.0", "6.1"), strict=True):
        with_deps, no_deps = leg_requirements(leg)
        pins = names(with_deps + no_deps)
        assert pins["django"].startswith(django + ".")
        assert "django-tasks" not in pins  # Django 6 has django.tasks built in
        assert {name: pins.get(name) for name in base if name not in ("django", "django-tasks")} == {
            name: version for name, version in base.items() if name not in ("django", "django-tasks")
        }
        assert {"pytest", "pytest-django"} <= set(pins)
    assert names(leg_requirements(LEGS[1])[1]) == {"django-prometheus": "2.5.0"}  # its Django<6.1 cap, skipped


def test_a_leg_whose_python_is_missing_is_skipped_and_said(capsys):
    missing = Leg("django-9.9", "python3.99", "django60.txt")
    assert test_legs.run_leg(missing) is None
    assert "SKIPPED django-9.9: python3.99 is not installed" in capsys.readouterr().out
