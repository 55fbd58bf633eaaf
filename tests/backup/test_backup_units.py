"""The backup pieces that need no server: schedules, times, sealing, verify output, rendered files."""

from __future__ import annotations

import datetime as dt
import io
import threading
from pathlib import Path

import pytest

from appliance.backup import pgbackrest
from appliance.backup.archive import _next_segment, _previous_segment, archive_command
from appliance.backup.errors import BadRequest
from appliance.backup.schedule import Cron, CronError, backup_service, next_run, run_schedule
from appliance.backup.sealed import CHUNK, SealedReader, Sealer, SealError, open_sealed
from appliance.backup.target import choose_set, parse_time, pg_time
from appliance.backup.verify import object_key, parse
from appliance.config import TenantConfig, host_config
from appliance.supervision import Supervisor

UTC = dt.UTC


def tenant(**backup: object) -> TenantConfig:
    host = host_config("unit", {"tenants": {"acme": {"slot": 1, "backup": backup or None}}})
    return host.tenant("acme")


# -- schedules ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 3 * * 1-6", dt.datetime(2026, 11, 22, 4, 0), dt.datetime(2026, 11, 23, 3, 0)),  # Sunday -> Monday
        ("0 3 * * 0", dt.datetime(2026, 11, 22, 2, 59, 30), dt.datetime(2026, 11, 22, 3, 0)),
        ("0 3 * * 7", dt.datetime(2026, 11, 22, 3, 0), dt.datetime(2026, 11, 29, 3, 0)),  # strictly after
        ("*/15 * * * *", dt.datetime(2026, 11, 22, 4, 7), dt.datetime(2026, 11, 22, 4, 15)),
        ("30 2 1 * *", dt.datetime(2026, 11, 22), dt.datetime(2026, 12, 1, 2, 30)),
        ("0 0 29 2 *", dt.datetime(2026, 3, 1), dt.datetime(2028, 2, 29)),
        ("0 4 1 * mon", dt.datetime(2026, 11, 22), dt.datetime(2026, 11, 23, 4, 0)),  # dom OR dow, as cron does
        ("15 1 * jan-feb sat", dt.datetime(2026, 11, 22), dt.datetime(2027, 1, 2, 1, 15)),
    ],
)
def test_cron_next_run_follows_cron_rules(expression: str, after: dt.datetime, expected: dt.datetime) -> None:
    assert Cron(expression).next_after(after) == expected


@pytest.mark.parametrize("expression", ["0 3 * *", "61 * * * *", "0 3 * * 8", "a b c d e", "*/0 * * * *",
                                        "5-1 * * * *"])
def test_malformed_cron_is_refused_with_the_expression_named(expression: str) -> None:
    with pytest.raises(CronError, match="schedule"):
        Cron(expression)


def test_default_schedules_alternate_full_on_sunday_and_diff_otherwise() -> None:
    acme = tenant()
    saturday_night = dt.datetime(2026, 11, 21, 12, 0)
    assert next_run(acme, saturday_night) == (dt.datetime(2026, 11, 22, 3, 0), "full")
    assert next_run(acme, dt.datetime(2026, 11, 22, 12, 0)) == (dt.datetime(2026, 11, 23, 3, 0), "diff")


def test_bundle_runs_fill_the_gaps_between_backups_and_never_displace_one() -> None:
    acme = tenant(bundle_schedule="*/15 * * * *")
    assert next_run(acme, dt.datetime(2026, 11, 23, 10, 1)) == (dt.datetime(2026, 11, 23, 10, 15), "bundle")
    assert next_run(acme, dt.datetime(2026, 11, 23, 2, 50)) == (dt.datetime(2026, 11, 23, 3, 0), "diff")
    assert next_run(tenant(), dt.datetime(2026, 11, 23, 10, 1))[1] == "diff"  # no setting: no bundle runs


def test_scheduler_is_a_supervised_program_without_secrets_in_its_definition() -> None:
    spec = backup_service(tenant())
    rendered = Supervisor().render(spec)
    assert "backup schedule --tenant acme" in rendered
    assert "user=tenant-acme" in rendered
    assert spec.port is None and spec.component == "backup"


def test_scheduler_takes_a_first_full_backup_then_follows_the_schedule_and_survives_failures() -> None:
    acme = tenant(full_schedule="0 3 * * 0", diff_schedule="*/1 * * * *")
    clock = [dt.datetime(2026, 11, 22, 2, 57, 30)]  # a Sunday
    ran: list[tuple[str, dt.datetime]] = []
    stop = threading.Event()

    def wait(seconds: float) -> bool:  # simulated time: waiting moves the clock
        clock[0] += dt.timedelta(seconds=seconds)
        return stop.is_set()

    def run(kind: str) -> str:
        ran.append((kind, clock[0]))
        if len(ran) == 2:
            raise RuntimeError("store unreachable")
        if len(ran) >= 5:
            stop.set()
        return f"{kind} done"

    log: list[str] = []
    run_schedule(lambda: acme, run, lambda: False, log=log.append, stop=stop, clock=lambda: clock[0],  # type: ignore[arg-type]
                 wait=wait, retry_s=5)
    assert ran[0] == ("full", dt.datetime(2026, 11, 22, 2, 57, 30))  # no backup yet: at once
    assert ran[1] == ("diff", dt.datetime(2026, 11, 22, 2, 58))  # failed ...
    assert ran[2] == ("diff", dt.datetime(2026, 11, 22, 2, 58, 5))  # ... and retried after retry_s
    assert ran[3] == ("diff", dt.datetime(2026, 11, 22, 2, 59))
    assert ran[4] == ("full", dt.datetime(2026, 11, 22, 3, 0))  # the full wins the minute both are due
    assert any("failed" in line for line in log) and log[-1] == "scheduler stopped"


# -- times and backup sets -------------------------------------------------------------------------------------
def test_times_parse_as_iso_8601_and_a_time_without_zone_is_utc() -> None:
    assert parse_time("2026-11-22T03:00:00Z") == dt.datetime(2026, 11, 22, 3, tzinfo=UTC)
    assert parse_time("2026-11-22 04:00:00+01:00") == dt.datetime(2026, 11, 22, 3, tzinfo=UTC)
    assert parse_time("2026-11-22T03:00") == dt.datetime(2026, 11, 22, 3, tzinfo=UTC)
    assert pg_time(dt.datetime(2026, 11, 22, 4, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == (
        "2026-11-22 03:00:00.000000+00")


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "2026-11-22T25:00", "", "1700000000"])
def test_malformed_times_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest, match="ISO 8601"):
        parse_time(text)


def _info(*stops: dt.datetime) -> dict[str, object]:
    return {"name": "acme", "backup": [
        {"label": f"b{i}", "type": "full" if i == 0 else "diff",
         "timestamp": {"start": int(stop.timestamp()) - 10, "stop": int(stop.timestamp())}}
        for i, stop in enumerate(stops)
    ]}


def test_a_point_in_time_uses_the_newest_backup_that_completed_before_it() -> None:
    first, second = dt.datetime(2026, 11, 1, 3, tzinfo=UTC), dt.datetime(2026, 11, 2, 3, tzinfo=UTC)
    info = _info(first, second)
    assert choose_set(info, None).label == "b1"
    assert choose_set(info, dt.datetime(2026, 11, 1, 12, tzinfo=UTC)).label == "b0"
    later = dt.datetime(2026, 11, 3, tzinfo=UTC)
    assert choose_set(info, later, now=later + dt.timedelta(days=1)).label == "b1"


def test_times_before_the_first_backup_or_in_the_future_and_no_backup_at_all_are_refused() -> None:
    info = _info(dt.datetime(2026, 11, 1, 3, tzinfo=UTC))
    with pytest.raises(BadRequest, match=r"before the first backup .* earliest point that can be restored is 2026-11"):
        choose_set(info, dt.datetime(2026, 10, 31, tzinfo=UTC))
    with pytest.raises(BadRequest, match="in the future"):
        choose_set(info, dt.datetime.now(UTC) + dt.timedelta(hours=1))
    with pytest.raises(BadRequest, match="no backup yet"):
        choose_set({"name": "acme", "backup": []}, None)


# -- sealing -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK])
def test_sealed_data_opens_to_exactly_what_was_written(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = io.BytesIO()
    with Sealer(raw, "passphrase") as sealer:
        for start in range(0, size, 100_000):
            sealer.write(data[start:start + 100_000])
    assert data[:64] not in raw.getvalue()[64:] or size < 64
    raw.seek(0)
    assert SealedReader(raw, "passphrase").read() == data


def _sealed(size: int) -> bytes:
    raw = io.BytesIO()
    with Sealer(raw, "passphrase") as sealer:
        sealer.write(b"x" * size)
    return raw.getvalue()


def test_a_flipped_byte_a_truncation_or_another_key_does_not_open() -> None:
    sealed = _sealed(2 * CHUNK + 10)
    flipped = bytearray(sealed)
    flipped[CHUNK] ^= 1
    for bad, key in ((bytes(flipped), "passphrase"), (sealed[:-20], "passphrase"),
                     (sealed[: 36 + CHUNK + 16], "passphrase"), (sealed, "other")):
        with pytest.raises(SealError):
            b"".join(open_sealed(io.BytesIO(bad), key))


# -- pgBackRest: rendered files, verify output ------------------------------------------------------------------
def test_the_wrapper_and_config_hold_paths_not_secrets(tmp_path: Path) -> None:
    acme = tenant()
    wrapper = pgbackrest.render_wrapper(acme)
    assert "PGBACKREST_REPO1_CIPHER_PASS=$(secret backup_cipher_passphrase)" in wrapper
    # The backup's own S3 pair, never the audit shipper's (issue 20).
    assert "PGBACKREST_REPO1_S3_KEY=$(secret backup_s3_access_key)" in wrapper
    assert "PGBACKREST_REPO1_S3_KEY_SECRET=$(secret backup_s3_secret_key)" in wrapper
    assert "secret s3_" not in wrapper
    assert f"secrets='{acme.secrets_dir}'" in wrapper
    host = host_config("unit", {"tenants": {"acme": {"slot": 1}}})
    config = pgbackrest.render_config(host, acme)
    assert "repo1-s3-endpoint=localhost" in config  # pgBackRest 2.45 matches DNS names only
    assert "repo1-cipher-type=aes-256-cbc" in config and "repo1-s3-bucket=acme-backup" in config
    assert "cipher-pass=" not in config and "s3-key=" not in config
    assert archive_command(acme) == f"{acme.backup_dir}/pgbackrest.sh archive-push %p"


def test_verify_output_is_read_for_its_verdict_and_bad_files() -> None:
    output = (
        "2026-11-22 02:58:01.785 P01   INFO: invalid checksum '20261122-025755F/pg_data/base/1/2675.lz4'\n"
        "2026-11-22 02:58:01.785 P01   INFO: file missing '15-1/0000000100000000/"
        "000000010000000000000003-e824fbc9711a8f9dd6031c54f1d4db597e144e76.lz4'\n"
        "2026-11-22 02:58:03.503 P00   INFO: stanza: bkta\n"
        "                                    status: error\n"
    )
    status, bad = parse(output)
    assert status == "error"
    assert bad[0] == ("invalid checksum", "20261122-025755F/pg_data/base/1/2675.lz4")
    acme = tenant()
    manifests = {"20261122-025755F": {"pg_data/base/1/2675": 1}}
    assert object_key(acme, bad[0][1], manifests) == "pgbackrest/backup/acme/20261122-025755F/bundle/1"
    assert object_key(acme, "20261122-025755F/pg_data/base/5/16410.lz4", manifests) == (
        "pgbackrest/backup/acme/20261122-025755F/pg_data/base/5/16410.lz4")
    assert object_key(acme, bad[1][1], manifests) == f"pgbackrest/archive/acme/{bad[1][1]}"


def test_wal_segment_arithmetic_crosses_log_file_boundaries() -> None:
    assert _next_segment("0000000100000000000000FF") == "000000010000000100000000"
    assert _previous_segment("000000010000000100000000") == "0000000100000000000000FF"
    assert _previous_segment("000000010000000000000000") is None


def test_bundles_open_safely_without_the_tarfile_data_filter(tmp_path: Path) -> None:
    """Debian 12's python3.11 (3.11.2, every host venv's) has no `filter="data"`: the hand-made check extracts a
    bundle's files and refuses what the filter would (paths out of the target, links, devices)."""
    import io
    import tarfile

    from appliance.backup.bundle import extract_checked

    def archive(*members: tuple[str, bytes | None, bytes]) -> io.BytesIO:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w|") as tar:
            for name, body, kind in members:
                info = tarfile.TarInfo(name)
                info.type = kind
                if body is not None:
                    info.size = len(body)
                info.mode = 0o4777
                tar.addfile(info, io.BytesIO(body) if body is not None else None)
        raw.seek(0)
        return raw

    good = archive(("secrets", None, tarfile.DIRTYPE), ("secrets/key", b"k", tarfile.REGTYPE))
    with tarfile.open(fileobj=good, mode="r|") as tar:
        extract_checked(tar, tmp_path / "ok")
    assert (tmp_path / "ok" / "secrets" / "key").read_bytes() == b"k"
    assert (tmp_path / "ok" / "secrets" / "key").stat().st_mode & 0o7777 == 0o755
    for bad in (("../escape", b"x", tarfile.REGTYPE), ("/etc/evil", b"x", tarfile.REGTYPE),
                ("link", None, tarfile.SYMTYPE), ("dev", None, tarfile.CHRTYPE)):
        target = tmp_path / bad[0].strip("/.").replace("/", "_")
        with tarfile.open(fileobj=archive(bad), mode="r|") as tar, pytest.raises(tarfile.TarError, match="refusing"):
            extract_checked(tar, target)
    assert not (tmp_path / "escape").exists()
