from intervals import contains, covered_length, gaps, intersect, merge


def test_merge():
    assert merge([(5, 8), (1, 3), (2, 4), (8, 9)]) == [(1, 4), (5, 9)]
    assert merge([]) == []
    assert merge([(1, 10), (2, 3)]) == [(1, 10)]


def test_covered_length():
    assert covered_length([(0, 5), (3, 7), (10, 12)]) == 9


def test_gaps():
    assert gaps([(2, 4), (6, 8)], 0, 10) == [(0, 2), (4, 6), (8, 10)]
    assert gaps([(0, 10)], 0, 10) == []
    assert gaps([], 3, 5) == [(3, 5)]
    assert gaps([(2, 20)], 0, 10) == [(0, 2)]


def test_contains():
    merged = [(1, 3), (5, 9)]
    assert contains(merged, 1) and contains(merged, 8)
    assert not contains(merged, 3) and not contains(merged, 0) and not contains(merged, 9)


def test_intersect():
    assert intersect([(0, 5), (8, 12)], [(3, 9), (11, 20)]) == [(3, 5), (8, 9), (11, 12)]
    assert intersect([(0, 2)], [(2, 4)]) == []
