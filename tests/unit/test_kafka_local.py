"""rating.kafka_local without starting a JVM: version pin, ids, and the errors a machine
without Java or Maven gets (make test-kafka must fail with them, never skip)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from rating import kafka_local
from rating.kafka_local import LocalKafkaError


def test_the_pom_pins_one_kafka_4_release() -> None:
    version = kafka_local.pinned_version()
    assert version.split(".")[0] == "4"
    assert len(version.split(".")) == 3


def test_cluster_id_is_16_bytes_of_url_safe_base64() -> None:
    cid = kafka_local.cluster_id()
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16
    assert cid != kafka_local.cluster_id()


def test_min_heap_is_a_quarter() -> None:
    assert kafka_local.min_heap("512m") == "128m"
    assert kafka_local.min_heap("1g") == "1g"  # never zero
    assert kafka_local.min_heap("odd") == "odd"


def test_no_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalKafkaError, match="Java 17 and Maven are needed for make test-kafka"):
        kafka_local.find_java()


def test_old_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalKafkaError, match="is Java 11"):
        kafka_local.find_java()


def test_no_maven_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalKafkaError, match="no `mvn` on PATH"):
        kafka_local.ensure_jars(lib=tmp_path / "lib")


def test_resolved_jars_need_no_maven(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / f"kafka_2.13-{kafka_local.pinned_version()}.jar").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert kafka_local.ensure_jars(lib=lib) == lib


def test_a_cluster_id_that_starts_with_a_dash_is_not_taken_for_an_option() -> None:
    options = kafka_local.format_options("-AbC_dEf", Path("/tmp/server.properties"))
    assert "--cluster-id=-AbC_dEf" in options
    assert "-AbC_dEf" not in options  # never a separate argument
