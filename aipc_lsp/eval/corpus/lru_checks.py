from lru import LRUCache, memoize


def test_eviction_order():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None
    assert list(cache.entries) == ["a", "c"]
    cache.put("a", 10)
    cache.put("d", 4)
    assert list(cache.entries) == ["a", "d"] and cache.get("a") == 10


def test_hit_rate():
    cache = LRUCache(1)
    assert cache.hit_rate() == 0.0
    cache.put(1, "x")
    cache.get(1)
    cache.get(2)
    cache.get(1)
    assert cache.hits == 2 and cache.misses == 1
    assert abs(cache.hit_rate() - 2 / 3) < 1e-9
    try:
        LRUCache(0)
    except ValueError:
        pass
    else:
        raise AssertionError("a cache that holds nothing must be refused")


def test_memoize():
    calls = []

    @memoize(2)
    def square(n):
        calls.append(n)
        return n * n

    assert [square(3), square(3), square(4), square(5), square(3)] == [9, 9, 16, 25, 9]
    assert calls == [3, 4, 5, 3]
    assert square.cache.hits == 1 and square.__name__ == "square"
