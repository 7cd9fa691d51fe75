"""A least-recently-used cache, and a decorator that memoizes with one."""

import functools
from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.entries = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key, default=None):
        if key not in self.entries:
            self.misses += 1
            return default
        self.hits += 1
        self.entries.move_to_end(key)
        return self.entries[key]

    def put(self, key, value):
        if key in self.entries:
            self.entries.move_to_end(key)
        self.entries[key] = value
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def hit_rate(self):
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


def memoize(capacity):
    """Cache a function's results by its positional arguments."""
    def decorate(function):
        cache = LRUCache(capacity)
        missing = object()

        @functools.wraps(function)
        def wrapper(*args):
            value = cache.get(args, missing)
            if value is missing:
                value = function(*args)
                cache.put(args, value)
            return value

        wrapper.cache = cache
        return wrapper
    return decorate
