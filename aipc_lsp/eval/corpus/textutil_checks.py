from textutil import camel_to_snake, slugify, snake_to_camel, top_words, truncate, wrap


def test_slugify():
    assert slugify("Hello, World!") == "hello-world"
    assert slugify("  Rock & Roll 2024 ") == "rock-roll-2024"


def test_wrap():
    assert wrap("the quick brown fox jumps over the lazy dog", 10) == [
        "the quick", "brown fox", "jumps over", "the lazy", "dog"]
    assert wrap("", 5) == []
    assert wrap("extraordinary day", 5) == ["extraordinary", "day"]


def test_truncate():
    assert truncate("short", 10) == "short"
    assert truncate("a longer sentence", 10) == "a longe..."
    assert truncate("abcdef", 2) == "..."


def test_top_words():
    assert top_words("the cat and the hat and the bat", 2) == ["the", "and"]
    assert top_words("b a", 5) == ["a", "b"]


def test_case_conversion():
    assert camel_to_snake("parseHTTPResponse") == "parse_http_response"
    assert camel_to_snake("userId") == "user_id"
    assert snake_to_camel("parse_http_response") == "parseHttpResponse"
    assert snake_to_camel("name") == "name"
