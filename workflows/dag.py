"""Workflow graphs: validation in one pass, topological order. Pure functions, no database.

Every problem is reported at once, each naming what is wrong and where (task ids, the tasks
on a cycle), so a client fixes a rejected workflow in one round trip.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    id: str
    depends_on: tuple[str, ...]


def find_problems(nodes: Sequence[Node], *, max_tasks: int) -> list[str]:
    """Everything wrong with the graph's shape (empty, too big, duplicate ids, unknown
    dependencies, self-dependencies, cycles). An empty list means it is a DAG."""
    if not nodes:
        return ["a workflow needs at least one task"]
    problems: list[str] = []
    if len(nodes) > max_tasks:
        problems.append(f"a workflow may have at most {max_tasks} tasks, this one has {len(nodes)}")
    seen: set[str] = set()
    duplicates: list[str] = []
    for node in nodes:
        if node.id in seen and node.id not in duplicates:
            duplicates.append(node.id)
        seen.add(node.id)
    for dup in duplicates:
        problems.append(f"duplicate task id {dup!r}")
    for node in nodes:
        for dep in node.depends_on:
            if dep == node.id:
                problems.append(f"task {node.id!r} depends on itself")
            elif dep not in seen:
                problems.append(f"task {node.id!r} depends on unknown task {dep!r}")
    if not problems:
        cycle = find_cycle({n.id: n.depends_on for n in nodes})
        if cycle:
            problems.append("cycle: " + " -> ".join(repr(t) for t in [*cycle, cycle[0]]))
    return problems


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of the dependency graph (as the tasks on it, in order), or None. Iterative
    depth-first search: a 1,000-task chain must not hit Python's recursion limit."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in graph:
        if colour[start] != WHITE:
            continue
        path: list[str] = [start]
        stack = [iter(graph[start])]
        colour[start] = GREY
        while stack:
            advanced = False
            for dep in stack[-1]:
                if colour.get(dep, BLACK) == GREY:
                    return path[path.index(dep) :]
                if colour.get(dep) == WHITE:
                    colour[dep] = GREY
                    path.append(dep)
                    stack.append(iter(graph[dep]))
                    advanced = True
                    break
            if not advanced:
                colour[path.pop()] = BLACK
                stack.pop()
    return None


def topological_order(nodes: Sequence[Node]) -> list[str]:
    """Task ids, every task after all of its dependencies (ties keep the submitted order)."""
    position = {n.id: i for i, n in enumerate(nodes)}
    pending = {n.id: len(set(n.depends_on)) for n in nodes}
    dependents: dict[str, list[str]] = {n.id: [] for n in nodes}
    for n in nodes:
        for dep in set(n.depends_on):
            dependents[dep].append(n.id)
    ready = [(position[i], i) for i, c in pending.items() if c == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, current = heapq.heappop(ready)
        order.append(current)
        for child in dependents[current]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, (position[child], child))
    return order


def dependents_of(nodes: Sequence[Node]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {n.id: [] for n in nodes}
    for n in nodes:
        for dep in dict.fromkeys(n.depends_on):
            out[dep].append(n.id)
    return out
