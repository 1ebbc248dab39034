"""More than one of each role: the jobs topic's partitions against the bridges, `BRIDGES` and
`WORKERS` in the dev stack, and the settings that refuse a shape that cannot work."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from django.core.exceptions import ImproperlyConfigured

from config import kafka
from devtools import devstack
from orchestration.consumers import bridge
from tests.security.test_security import load_settings


@pytest.fixture
def one_partition_topic(settings: Any) -> Any:
    name = f"jobs-scale-{uuid.uuid4().hex[:10]}"
    kafka.ensure_topics([name], 1)
    settings.KAFKA_JOBS_TOPIC = name
    yield name
    AdminClient(kafka.base_config()).delete_topics([name])


def test_a_topic_with_fewer_partitions_than_configured_is_grown_where_the_broker_can(one_partition_topic, caplog):
    """Apache Kafka grows a topic (CreatePartitions); the embedded Tansu refuses, which is
    logged. Either way the count returned is the topic's real one."""
    have = kafka.ensure_partitions(one_partition_topic, 3)
    topic = AdminClient(kafka.base_config()).list_topics(one_partition_topic, timeout=10).topics[one_partition_topic]
    assert have == len(topic.partitions)
    assert have == 3 or (have == 1 and "kafka.partitions_refused" in caplog.text)


def test_a_bridge_refuses_to_start_with_fewer_partitions_than_bridges(one_partition_topic, settings, monkeypatch):
    settings.KAFKA_JOBS_PARTITIONS, settings.BRIDGES = 1, 2  # what a topic made elsewhere could have
    with pytest.raises(ImproperlyConfigured, match="fewer than BRIDGES=2"):
        bridge.check_partitions()


def test_bridges_and_workers_in_the_dev_stack(monkeypatch):
    monkeypatch.setenv("BRIDGES", "2")
    monkeypatch.setenv("WORKERS", "4")
    processes = {role.name: role.processes for role in devstack.roles(8000)}
    assert processes["bridge"] == 2
    assert processes["worker"] == 4


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BRIDGES": "5", "KAFKA_JOBS_PARTITIONS": "4"}, "BRIDGES"),
        ({"BRIDGES": "0"}, "BRIDGES"),
        ({"JOB_RETENTION_DAYS_BY_QUEUE": "emails=7,reports"}, "JOB_RETENTION_DAYS_BY_QUEUE"),
        ({"JOB_RETENTION_DAYS_BY_QUEUE": "emails=-1"}, "JOB_RETENTION_DAYS_BY_QUEUE"),
        ({"JOB_RETENTION_DAYS": "-3"}, "JOB_RETENTION_DAYS"),
    ],
)
def test_a_shape_that_cannot_work_fails_at_start_naming_the_variable(env, named):
    result = load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr
    assert load_settings(JOB_RETENTION_DAYS_BY_QUEUE="emails=7, reports=365").returncode == 0
