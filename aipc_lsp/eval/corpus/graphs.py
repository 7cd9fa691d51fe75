"""Graphs as adjacency dicts: node -> list of neighbours."""

from collections import deque


def shortest_path(graph, start, goal):
    """The fewest-edges path from start to goal as a list of nodes, or None."""
    previous = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = previous[node]
            return path[::-1]
        for neighbour in graph.get(node, []):
            if neighbour not in previous:
                previous[neighbour] = node
                queue.append(neighbour)
    return None


def topological_order(graph):
    """Nodes so that every edge goes forward (Kahn's algorithm); ValueError on a cycle."""
    indegree = {node: 0 for node in graph}
    for targets in graph.values():
        for target in targets:
            indegree[target] = indegree.get(target, 0) + 1
    ready = sorted(node for node, degree in indegree.items() if degree == 0)
    order = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for target in graph.get(node, []):
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    if len(order) != len(indegree):
        raise ValueError("the graph has a cycle")
    return order


def components(graph):
    """Connected components of an undirected graph, each a sorted list, sorted by first node."""
    seen = set()
    result = []
    for start in sorted(graph):
        if start in seen:
            continue
        stack = [start]
        seen.add(start)
        group = []
        while stack:
            node = stack.pop()
            group.append(node)
            for neighbour in graph[node]:
                if neighbour not in seen:
                    seen.add(neighbour)
                    stack.append(neighbour)
        result.append(sorted(group))
    return result


def reverse(graph):
    """The same graph with every edge turned around."""
    reversed_graph = {node: [] for node in graph}
    for node, targets in graph.items():
        for target in targets:
            reversed_graph.setdefault(target, []).append(node)
    return reversed_graph
