from graphs import components, reverse, shortest_path, topological_order

GRAPH = {"a": ["b", "c"], "b": ["d"], "c": ["d", "e"], "d": ["f"], "e": ["f"], "f": []}


def test_shortest_path():
    assert shortest_path(GRAPH, "a", "f") == ["a", "b", "d", "f"]
    assert shortest_path(GRAPH, "a", "a") == ["a"]
    assert shortest_path(GRAPH, "f", "a") is None


def test_topological_order():
    assert topological_order(GRAPH) == ["a", "b", "c", "d", "e", "f"]
    try:
        topological_order({"x": ["y"], "y": ["x"]})
    except ValueError:
        pass
    else:
        raise AssertionError("a cycle must be refused")


def test_components():
    undirected = {1: [2], 2: [1], 3: [], 4: [5], 5: [4, 6], 6: [5]}
    assert components(undirected) == [[1, 2], [3], [4, 5, 6]]


def test_reverse():
    assert reverse({"a": ["b", "c"], "b": ["c"]}) == {"a": [], "b": ["a"], "c": ["a", "b"]}
