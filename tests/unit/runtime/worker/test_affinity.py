"""`--cpu-affinity`: parsing, and which CPU each worker process gets (pure)."""

from __future__ import annotations

import pytest
from ebbtide.worker.affinity import Affinity, choose_cpu, cpu_list, parse_affinity


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", Affinity("none")),
        (" AUTO ", Affinity("auto")),
        ("3", Affinity("list", (3,))),
        ("0-3,6", Affinity("list", (0, 1, 2, 3, 6))),
        ("6,0-1,1", Affinity("list", (0, 1, 6))),
    ],
)
def test_values(value: str, expected: Affinity):
    assert parse_affinity(value) == expected


@pytest.mark.parametrize(
    ("value", "named"),
    [("x", "'x'"), ("0-", "'0-'"), ("1,,2", "'1,,2'"), ("3-1", "'3-1'"), ("-1", "'-1'")],
)
def test_a_bad_value_is_named(value: str, named: str):
    with pytest.raises(ValueError, match="--cpu-affinity") as err:
        parse_affinity(value)
    assert named in str(err.value)


def test_cpu_list_is_written_as_the_kernel_does():
    assert cpu_list({0, 1, 2, 5}) == "0-2,5"
    assert cpu_list((7,)) == "7"
    assert cpu_list(set()) == ""


def test_none_pins_nothing():
    assert choose_cpu(0, Affinity("none"), {0, 1}, 2, 2)[0] is None


def test_a_list_gives_each_process_the_next_cpu_in_turn():
    listed = parse_affinity("2,3")
    assert [choose_cpu(i, listed, {0, 1, 2, 3}, 4, 4)[0] for i in range(5)] == [2, 3, 2, 3, 2]


def test_a_listed_cpu_the_process_may_not_use_is_refused_by_number():
    with pytest.raises(ValueError, match=r"CPU 4-5 is not one .* \(allowed: 0-3\)"):
        choose_cpu(0, parse_affinity("3-5"), {0, 1, 2, 3}, 8, 4)


def test_auto_pins_only_cpus_of_the_containers_own():
    auto = Affinity("auto")
    # Kubernetes' static CPU manager: CPUs 4 and 5 of 16, a limit of 2.
    assert [choose_cpu(i, auto, {5, 4}, 16, 2)[0] for i in range(3)] == [4, 5, 4]
    # Every CPU of the machine allowed: shared with everyone else.
    cpu, why = choose_cpu(0, auto, {0, 1}, 2, 2)
    assert cpu is None and "shared" in why
    # A cpuset wider than the CPU limit: the quota is shared across them.
    cpu, why = choose_cpu(0, auto, {0, 1, 2, 3}, 16, 2)
    assert cpu is None and "limit is 2" in why


def test_a_pin_the_kernel_refuses_leaves_the_worker_running_unpinned(monkeypatch, capsys):
    import os

    from ebbtide import logs
    from ebbtide.worker import affinity

    logs.setup("INFO")  # a handler on stderr, bound now, where capsys sees it

    def refuse(pid: int, cpus: set[int]) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    listed = parse_affinity(str(min(os.sched_getaffinity(0))))
    assert affinity.pin_process(0, listed) is None
    assert "cannot pin to a CPU" in capsys.readouterr().err
