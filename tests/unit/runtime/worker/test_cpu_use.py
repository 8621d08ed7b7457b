"""The thread limit's reading of the kernel's run delay (schedstat)."""

from __future__ import annotations

import threading
from pathlib import Path

from ebbtide.worker.cpu_use import read_cpu_use, run_delay_s


def test_run_delays_are_summed_over_the_threads_in_seconds(tmp_path: Path):
    for tid, line in (("10", "500 2000000000 7\n"), ("11", "9 500000000 1\n")):
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "schedstat").write_text(line)
    (tmp_path / "12").mkdir()  # a thread that ended between the listing and the read
    assert run_delay_s(str(tmp_path)) == 2.5


def test_no_schedstat_reads_as_no_wait(tmp_path: Path):
    assert run_delay_s(str(tmp_path / "absent")) == 0.0
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "schedstat").write_text("garbled\n")
    assert run_delay_s(str(tmp_path)) == 0.0


def test_this_process_reads_its_own_cpu_and_wait():
    stop = threading.Event()
    spinner = threading.Thread(target=stop.wait)
    spinner.start()
    try:
        use = read_cpu_use()
    finally:
        stop.set()
        spinner.join()
    assert use.used > 0 and use.waited >= 0
