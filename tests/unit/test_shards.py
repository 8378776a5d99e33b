"""The test shards (tests/shards.py): every file in exactly one shard, balanced, stable."""

from __future__ import annotations

import pytest

import shards


def test_every_group_lands_in_exactly_one_shard_and_heavy_files_are_spread() -> None:
    weights = {"tests/vm/a.py": 900.0, "tests/vm/b.py": 800.0, "tests/vm/c.py": 100.0, shards.NO_GUEST: 300.0}
    groups = [*weights, "tests/vm/new.py"]
    placed = shards.assign(groups, weights, 2)
    assert set(placed) == set(groups) and set(placed.values()) == {1, 2}
    assert placed["tests/vm/a.py"] != placed["tests/vm/b.py"]
    loads = {
        shard: sum(weights.get(g, shards.UNKNOWN_WEIGHT) for g, s in placed.items() if s == shard)
        for shard in (1, 2)
    }
    assert abs(loads[1] - loads[2]) <= 300.0, loads
    # The same input gives the same answer whatever the order it was collected in.
    assert shards.assign(reversed(groups), weights, 2) == placed


def test_files_outside_tests_vm_travel_together() -> None:
    assert (
        shards.group_of("tests/unit/test_x.py") == shards.group_of("tests/host/test_y.py") == shards.NO_GUEST
    )
    assert shards.group_of("tests/vm/test_runs.py") == "tests/vm/test_runs.py"


@pytest.mark.parametrize("text", ["", "0/2", "3/2", "1", "a/b", "1/0"])
def test_a_bad_shard_spec_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(shards.ShardError, match="expected K/N"):
        shards.parse_shard(text)


def test_weights_are_summed_per_file_from_junit_xml() -> None:
    xml = """<testsuites><testsuite>
      <testcase classname="tests.vm.test_runs" name="a" time="10.5"/>
      <testcase classname="tests.vm.test_runs" name="b" time="2"/>
      <testcase classname="tests.vm.test_walls.TestX" name="c" time="3"/>
      <testcase classname="tests.unit.test_x" name="d" time="1.25"/>
      <testcase classname="tests.host.test_y" name="e" time="0.5"/>
    </testsuite></testsuites>"""
    assert shards.weights_from_junit(xml) == {
        "tests/vm/test_runs.py": 12.5, "tests/vm/test_walls.py": 3.0, shards.NO_GUEST: 1.8,
    }  # fmt: skip


def test_the_stored_weights_name_real_files() -> None:
    weights = shards.load_weights()
    assert shards.NO_GUEST in weights
    for group in weights:
        assert group == shards.NO_GUEST or (shards.WEIGHTS.parent.parent / group).is_file(), group
