"""Reading a run log back from its end: work linear in what it reads, and the answers a full scan gives."""

from __future__ import annotations

from pathlib import Path

from car.logs import RunLog, _read_back, last_run_output, run_output, tail


def written_lines(path: Path) -> list:
    """The log's lines as written: split on \\n alone, as its readers do."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def write_mixed_runs(path: Path, runs: int) -> None:
    """Runs of lines of many lengths, some ending as a start marker does (a forged one, in the run)."""
    log = RunLog(path, max_bytes=0, backup_count=3)
    for run_id in range(1, runs + 1):
        log.start_run(run_id)
        for i in range(40):
            log.write(f"out {run_id}.{i} " + "y" * ((run_id * 37 + i * 101) % 700), run_id)
        log.write(f"=== run {run_id} start ===", run_id)
        log.end_run(run_id, "code 0")
    log.close()


def test_reading_from_the_end_gives_what_a_full_scan_gives(tmp_path: Path) -> None:
    """The linear read-back (fewer, larger reads) changes no answer, for a run near either end."""
    path = tmp_path / "car.log"
    write_mixed_runs(path, 400)
    assert path.stat().st_size > 5_000_000  # many of _read_back's first 64 KiB steps
    for run_id in (1, 2, 3, 200, 399, 400):
        assert last_run_output(path, 3, run_id) == run_output(path, 3, run_id) != ""
    every = written_lines(path)
    for n in (1, 2, 500, 10_000, len(every) - 1, len(every), len(every) + 5):
        assert tail(path, n) == every[-n:]


def test_reading_back_a_large_file_looks_at_each_byte_a_bounded_number_of_times(tmp_path: Path) -> None:
    """Review: enough() saw the whole buffer again after each fixed 64 KiB step: quadratic in the size."""
    path = tmp_path / "big"
    path.write_bytes((b"z" * 99 + b"\n") * 40_000)  # 4 MB: some sixty steps of 64 KiB
    seen: list = []
    data, whole = _read_back(path, lambda d: seen.append(len(d)) or False)  # never enough: to the start
    assert whole and data == path.read_bytes()
    assert sum(seen) <= 3 * len(data), f"{sum(seen):,} bytes looked at for a {len(data):,}-byte file"
