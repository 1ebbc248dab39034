"""Graph validation and order, without a database."""

from __future__ import annotations

from workflows.dag import Node, find_cycle, find_problems, topological_order


def nodes(spec: dict[str, list[str]]) -> list[Node]:
    return [Node(k, tuple(v)) for k, v in spec.items()]


def test_a_dag_has_no_problems_and_a_topological_order():
    graph = nodes({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    assert find_problems(graph, max_tasks=10) == []
    assert topological_order(graph) == ["a", "b", "c", "d"]


def test_every_problem_is_named():
    assert find_problems([], max_tasks=10) == ["a workflow needs at least one task"]
    assert find_problems(nodes({"a": [], "b": ["zz"]}), max_tasks=10) == ["task 'b' depends on unknown task 'zz'"]
    assert find_problems([Node("a", ()), Node("a", ())], max_tasks=10) == ["duplicate task id 'a'"]
    assert find_problems(nodes({"a": ["a"]}), max_tasks=10) == ["task 'a' depends on itself"]
    assert find_problems(nodes({"a": [], "b": []}), max_tasks=1) == [
        "a workflow may have at most 1 tasks, this one has 2"
    ]
    (cycle,) = find_problems(nodes({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"]}), max_tasks=10)
    assert cycle.startswith("cycle: ")
    assert sorted(cycle.removeprefix("cycle: ").split(" -> ")[:-1]) == ["'b'", "'c'", "'d'"]


def test_a_long_chain_needs_no_recursion():
    chain = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(5000)}
    assert find_cycle(chain) is None
    assert topological_order(nodes(chain))[-1] == "t4999"
