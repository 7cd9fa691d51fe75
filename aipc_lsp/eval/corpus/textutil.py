"""Small text helpers."""

import re
from collections import Counter


def slugify(title):
    """'Hello, World!' -> 'hello-world'."""
    lowered = title.lower()
    words = re.findall(r"[a-z0-9]+", lowered)
    return "-".join(words)


def wrap(text, width):
    """Greedy word wrap: lines of at most `width` characters (longer words stand alone)."""
    lines = []
    current = ""
    for word in text.split():
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def truncate(text, limit, ellipsis="..."):
    """Cut to `limit` characters, the ellipsis included (the ellipsis alone if it is longer)."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(ellipsis))
    return text[:keep] + ellipsis


def top_words(text, n):
    """The n most frequent words (lowercase), most frequent first, ties alphabetically."""
    counts = Counter(re.findall(r"[a-z']+", text.lower()))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[:n]]


def camel_to_snake(name):
    """'parseHTTPResponse' -> 'parse_http_response'."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return name.lower()


def snake_to_camel(name):
    """'parse_http_response' -> 'parseHttpResponse'."""
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)
