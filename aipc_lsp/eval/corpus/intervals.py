"""Half-open intervals [start, end) as (start, end) tuples."""

from bisect import bisect_right


def merge(intervals):
    """Overlapping or touching intervals merged, sorted by start."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            last_start, last_end = merged[-1]
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def covered_length(intervals):
    """Total length covered by the intervals, overlaps counted once."""
    return sum(end - start for start, end in merge(intervals))


def gaps(intervals, lower, upper):
    """The parts of [lower, upper) that no interval covers."""
    result = []
    cursor = lower
    for start, end in merge(intervals):
        if start > cursor:
            result.append((cursor, min(start, upper)))
        cursor = max(cursor, end)
        if cursor >= upper:
            break
    if cursor < upper:
        result.append((cursor, upper))
    return result


def contains(merged, point):
    """Whether `point` lies in one of the sorted, merged intervals."""
    starts = [start for start, _ in merged]
    index = bisect_right(starts, point) - 1
    if index < 0:
        return False
    return point < merged[index][1]


def intersect(first, second):
    """The intersection of two sorted lists of disjoint intervals."""
    result = []
    i = j = 0
    while i < len(first) and j < len(second):
        start = max(first[i][0], second[j][0])
        end = min(first[i][1], second[j][1])
        if start < end:
            result.append((start, end))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return result
