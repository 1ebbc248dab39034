"""The fast path for job submits (jobs.fast_input) against the DRF serializers it stands in for.

The one property: for any input, the fast path says "not sure" (None), or DRF accepts the
input too and `to_spec` gives the same specs, field by field, type by type. Hypothesis makes
the input: well-formed jobs, and well-formed jobs with odd values put in (legal to DRF or not).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import msgspec.inspect
import orjson
import pytest
from django.test import override_settings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.fields import CharField, FloatField, IntegerField

from jobs import fast_input
from jobs.models import Job, Outbox
from jobs.serializers import BackoffSerializer, BulkInputSerializer, JobInputSerializer
from jobs.services import JobSpec

JOBS = "/api/v1/jobs/"

# Cheap (no database): many examples, the same ones every `make test`; `make fuzz` explores.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30")) * 10
explore = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize="FUZZ_EXAMPLES" not in os.environ,
)
PAYLOAD_MAX = 300  # JOB_PAYLOAD_MAX_BYTES while generating, so payloads cross it often

# --- what DRF says, and how two spec lists compare ---------------------------------------------


def drf_bulk(data: Any) -> list[JobSpec] | None:
    serializer = BulkInputSerializer(data=data)
    if not serializer.is_valid():
        return None
    to_spec = JobInputSerializer().to_spec
    return [to_spec(item) for item in serializer.validated_data["jobs"]]


def drf_single(data: Any) -> JobSpec | None:
    serializer = JobInputSerializer(data=data)
    return serializer.to_spec(serializer.validated_data) if serializer.is_valid() else None


def typed(value: Any) -> Any:
    """`value` with the type of every scalar beside it and dicts as ordered pairs: 2 and 2.0,
    1 and True, {"a", "b"} and {"b", "a"} all differ (the request hash and the row would)."""
    if isinstance(value, dict):
        return [(k, typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def assert_same_spec(fast: JobSpec, drf: JobSpec) -> None:
    assert type(fast) is JobSpec
    for f in dataclasses.fields(JobSpec):
        mine, theirs = getattr(fast, f.name), getattr(drf, f.name)
        if f.name == "payload":  # the request's own object in both (NaN would defeat ==)
            assert mine is theirs or (mine == {} and theirs == {} and type(mine) is dict), f.name
        else:
            assert typed(mine) == typed(theirs), f.name


def assert_agrees_with_drf(data: Any) -> list[JobSpec] | None:
    fast = fast_input.bulk_specs(data)
    event("fast path" if fast is not None else "fell back")
    if fast is not None:
        drf = drf_bulk(data)
        assert drf is not None, "the fast path accepted what DRF refuses"
        assert len(fast) == len(drf)
        for mine, theirs in zip(fast, drf, strict=True):
            assert_same_spec(mine, theirs)
    return fast


# --- input ----------------------------------------------------------------------------------

TYPES = ["demo.noop", "demo.echo", "demo.sleep", "demo.fail", "demo.flaky", "demo.log"]
no_nul = st.characters(codec="utf-8", exclude_characters="\x00")
plain = st.text(no_nul, min_size=1, max_size=30).filter(lambda s: s.strip() == s)
# Around the 200-character limit, some beyond the Basic Multilingual Plane.
long_text = st.integers(190, 210).flatmap(lambda n: st.sampled_from(["k", "é", "😀"]).map(lambda c: c * n))
odd_text = st.one_of(
    st.just(""),
    st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\x1c", "\x85"]).flatmap(
        lambda ws: st.sampled_from([*TYPES, "k", "default"]).flatmap(
            lambda s: st.sampled_from([ws + s, s + ws, ws + s + ws, ws])
        )
    ),
    plain.map(lambda s: s + "\x00"),
    plain.map(lambda s: "\ud800" + s),
    st.just("\ud83d\ude00"),  # a pair of surrogates as two code points
    st.text(max_size=8),  # anything, surrogates and control characters too
    long_text,
    st.integers(0, 5).map(lambda n: "x" * 5000),
)
numbers_as_text = st.one_of(
    st.integers(-3, 30).map(str),
    st.integers(0, 9).map(lambda i: f" {i} "),
    st.sampled_from(["5.0", "5.", "5.00 ", "1e2", "\u0665", "1_0", "0x5", "true", "nan", "inf", "-0", "+3"]),
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 30),
    st.integers(-(2**70), 2**70),
    st.integers(-5, 30).map(float),  # 5.0 for an integer
    st.floats(),
    numbers_as_text,
    odd_text,
    st.sampled_from(["schedule:1", "schedule:", "2026-01-02T03:04:05Z", "2026-01-02", "nope", "default"]),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.sampled_from(["initial", "factor", "max", "jitter", "x"]), st.integers(-1, 5), max_size=3),
)

payloads = st.dictionaries(
    st.text(no_nul, max_size=8),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)  # JSON numbers orjson reads (and writes)
        | st.floats(allow_nan=False)
        | st.text(no_nul, max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(no_nul, max_size=6), inner, max_size=4),
        max_leaves=10,
    ),
    max_size=4,
) | st.integers(250, 350).map(lambda n: {"blob": "x" * n})  # around PAYLOAD_MAX
odd_payloads = st.one_of(
    json_values,  # NUL, surrogates and non-objects among them
    st.just({"k\x00": 1}),
    st.just({"nested": [{"deep": "a\x00b"}]}),
    st.just({"s": "\udfff"}),
)
backoffs = st.fixed_dictionaries(
    {},
    optional={
        "initial": st.integers(0, 86400) | st.floats(0, 86400),
        "factor": st.integers(1, 100) | st.floats(1, 100),
        "max": st.integers(0, 7 * 86400) | st.floats(0, 7 * 86400),
        "jitter": st.sampled_from([0, 1]) | st.floats(0, 1),
        "unknown": json_scalars,
    },
)
keys = st.sampled_from(["k1", "k2", "k3"]) | plain.filter(lambda s: not s.startswith("schedule:"))

canonical_fields: dict[str, st.SearchStrategy[Any]] = {
    "payload": payloads,
    "queue": st.sampled_from(["default", "q", "fast:q", "emails"]),  # declared (tests/conftest.py)
    "priority": st.integers(0, 9),
    "max_attempts": st.integers(1, 25),
    "backoff": backoffs,
    "timeout_seconds": st.integers(1, 7 * 86400),
    "run_at": st.none(),
    "idempotency_key": st.none() | keys,
    "concurrency_key": st.none() | plain,
    "something_else": json_scalars,  # unknown keys: ignored by both
}


@st.composite
def canonical_jobs(draw: st.DrawFn) -> dict[str, Any]:
    job = draw(st.fixed_dictionaries({"type": st.sampled_from(TYPES)}, optional=canonical_fields))
    if job.get("concurrency_key") is not None and draw(st.booleans()):
        job["concurrency_limit"] = draw(st.none() | st.integers(1, 1000))
    return job


@st.composite
def odd_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A canonical job with one to three fields given odd values, or dropped."""
    job = draw(canonical_jobs())
    for name in draw(
        st.lists(st.sampled_from(["type", *canonical_fields, "concurrency_limit"]), min_size=1, max_size=3)
    ):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            job.pop(name, None)
        elif name == "queue" and choice < 4:  # a valid name, but not a declared queue (unless by chance)
            job[name] = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", fullmatch=True))
        elif name == "payload":
            job[name] = draw(odd_payloads)
        elif name == "backoff" and choice < 5:
            job[name] = {draw(st.sampled_from(["initial", "factor", "max", "jitter"])): draw(odd)}
        else:
            job[name] = draw(odd)
    return job


any_job = canonical_jobs() | odd_jobs()


# --- the property ---------------------------------------------------------------------------


@pytest.mark.fuzz
@explore
@given(st.lists(any_job, min_size=1, max_size=5))
def test_bulk_fast_path_is_none_or_what_drf_gives(jobs):
    with override_settings(JOB_PAYLOAD_MAX_BYTES=PAYLOAD_MAX):
        assert_agrees_with_drf({"jobs": jobs})


@pytest.mark.fuzz
@explore
@given(any_job)
def test_single_fast_path_is_none_or_what_drf_gives(job):
    with override_settings(JOB_PAYLOAD_MAX_BYTES=PAYLOAD_MAX):
        fast = fast_input.job_spec(job)
        event("fast path" if fast is not None else "fell back")
        if fast is not None:
            drf = drf_single(job)
            assert drf is not None, "the fast path accepted what DRF refuses"
            assert_same_spec(fast, drf)


@pytest.mark.fuzz
@explore
@given(st.lists(canonical_jobs(), min_size=1, max_size=5).filter(lambda jobs: _keys_unique(jobs)))
def test_well_formed_bulks_take_the_fast_path(jobs):
    """Falling back is never wrong, but the common request must not need to."""
    jobs = [{**job, "payload": {}} if _too_big(job) else job for job in jobs]
    assert assert_agrees_with_drf({"jobs": jobs}) is not None


def _keys_unique(jobs: list[dict[str, Any]]) -> bool:
    keys = [j["idempotency_key"] for j in jobs if j.get("idempotency_key") is not None]
    return len(keys) == len(set(keys))


def _too_big(job: dict[str, Any]) -> bool:
    return len(orjson.dumps(job.get("payload", {}))) > PAYLOAD_MAX


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "jobs",
        {},
        {"jobs": None},
        {"jobs": []},
        {"jobs": {"type": "demo.noop"}},
        {"jobs": "demo.noop"},
        {"jobs": [None]},
        {"jobs": [["demo.noop"]]},
        {"jobs": [{"type": "demo.noop"}] * 1001},
        {"jobs": [{"type": "demo.noop", "idempotency_key": "k"}, {"type": "demo.noop", "idempotency_key": "k"}]},
        {"jobs": [{"type": "demo.noop", "concurrency_limit": 3}]},
        {"jobs": [{"type": "demo.noop", "backoff": None}]},
        {"jobs": [{"type": "demo.noop", "payload": None}]},
        {"jobs": [{"type": "demo.noop", "run_at": "2026-01-02T03:04:05Z"}]},  # legal, but DRF's to parse
        {"jobs": [{"type": "demo.noop", "priority": "7"}]},  # legal, DRF's to coerce
        {"jobs": [{"type": "demo.noop", "priority": True}]},
        {"jobs": [{"type": "demo.noop", "priority": 7.0}]},
        {"jobs": [{"type": "demo.noop", "backoff": {"jitter": True}}]},  # DRF takes it as 1.0
        {"jobs": [{"type": " demo.noop"}]},
        {"jobs": [{"type": "demo.noop", "queue": "q\n"}]},
        {"jobs": [{"type": "demo.noop", "idempotency_key": "schedule:1:2"}]},
        {"jobs": [{"type": "nope"}]},
    ],
)
def test_odd_or_bad_bulks_fall_back(data):
    assert fast_input.bulk_specs(data) is None


def test_the_bulk_limit_is_the_smaller_of_the_setting_and_the_serializers(settings):
    jobs = {"jobs": [{"type": "demo.noop"}] * 3}
    assert fast_input.bulk_specs(jobs) is not None
    settings.JOBS_BULK_MAX = 2
    assert fast_input.bulk_specs(jobs) is None


FALLS_BACK = {"unique_key", "unique_for", "unique_policy", "debounce_seconds", "debounce_max_seconds"}


def test_ranges_lengths_and_defaults_are_the_serializers():
    """The msgspec structs restate the serializers' numbers: they must not drift apart."""
    for serializer, struct in [(JobInputSerializer(), fast_input._Job), (BackoffSerializer(), fast_input._Backoff)]:
        info = {f.name: f for f in msgspec.inspect.type_info(struct).fields}  # type: ignore[attr-defined]
        for name, field in serializer.fields.items():
            if name in FALLS_BACK:
                continue  # the fast path only notices these, and leaves the job to DRF
            kind = info[name].type
            kind = next((t for t in getattr(kind, "types", [kind]) if type(t) is not msgspec.inspect.NoneType), kind)
            if isinstance(field, IntegerField | FloatField):
                assert (kind.ge, kind.le) == (field.min_value, field.max_value), name
                assert info[name].default == field.default, name
                assert type(info[name].default) is type(field.default), name
            elif isinstance(field, CharField) and field.max_length is not None:
                assert kind.max_length == field.max_length, name


# --- through the API --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_bad_item_still_gives_drfs_400_by_position_and_creates_nothing(api):
    good = {"type": "demo.echo", "payload": {"a": 1}, "priority": 7, "queue": "q"}
    jobs = [good, good, {"type": "demo.noop", "priority": 10}, good, {"type": "demo.noop", "run_at": "soon"}]
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "Invalid input: jobs.2.priority: Ensure this value is less than or equal to 9.; "
        "jobs.4.run_at: Datetime has wrong format. Use one of these formats instead: "
        "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].",
        "code": "invalid",
        "errors": {
            "jobs": {
                "2": {"priority": ["Ensure this value is less than or equal to 9."]},
                "4": {"run_at": ["Datetime has wrong format. Use one of these formats instead: "
                                 "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."]},
            }
        },
    }  # fmt: skip
    assert not Job.objects.exists()
    assert not Outbox.objects.exists()


@pytest.mark.django_db
def test_odd_but_legal_items_still_get_drfs_reading(api):
    """DRF's coercions survive: text numbers, 1.0 for an int, trimmed text, a run_at."""
    jobs = [
        {"type": " demo.noop ", "priority": "7", "max_attempts": 3.0, "backoff": {"jitter": True}},
        {"type": "demo.noop", "run_at": "2030-01-02T03:04:05Z", "idempotency_key": 12},
    ]
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 201, response.json()
    first, second = response.json()["jobs"]
    assert (first["type"], first["priority"], first["max_attempts"]) == ("demo.noop", 7, 3)
    assert first["backoff"]["jitter"] == 1.0
    assert second["run_at"].startswith("2030-01-02T03:04:05")
    assert second["idempotency_key"] == "12"


@pytest.mark.django_db
def test_fast_bulk_rows_match_what_drf_would_have_written(api):
    jobs = [
        {"type": "demo.noop"},
        {"type": "demo.echo", "payload": {"x": [1, {"y": None}]}, "priority": 9, "queue": "fast:q",
         "max_attempts": 25, "backoff": {"initial": 1}, "timeout_seconds": 10, "idempotency_key": "fk",
         "concurrency_key": "ck"},
    ]  # fmt: skip
    assert fast_input.bulk_specs({"jobs": jobs}) is not None
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 201
    noop, echo = Job.objects.get(type="demo.noop"), Job.objects.get(type="demo.echo")
    assert noop.backoff == {"initial": 2.0, "factor": 2.0, "max": 3600, "jitter": 0.2}
    assert (echo.queue, echo.priority, echo.max_attempts, echo.timeout_seconds) == ("fast:q", 9, 25, 10)
    assert echo.backoff == {"initial": 1.0, "factor": 2.0, "max": 3600.0, "jitter": 0.2}
    assert (echo.idempotency_key, echo.concurrency_key, echo.concurrency_limit) == ("fk", "ck", 1)
    assert echo.request_hash == drf_bulk({"jobs": jobs})[1].request_hash()


@pytest.mark.django_db
def test_single_submit_takes_the_fast_path_and_keeps_drfs_errors(api):
    ok = api.post(JOBS, {"type": "demo.noop", "priority": 8}, format="json", HTTP_IDEMPOTENCY_KEY="hk")
    assert ok.status_code == 201
    assert (ok.json()["idempotency_key"], ok.json()["priority"]) == ("hk", 8)
    again = api.post(JOBS, {"type": "demo.noop", "priority": 8}, format="json", HTTP_IDEMPOTENCY_KEY="hk")
    assert again.status_code == 200
    assert again.json()["id"] == ok.json()["id"]
    bad = api.post(JOBS, {"type": "demo.noop", "priority": True}, format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"] == {"priority": ["A valid integer is required."]}
