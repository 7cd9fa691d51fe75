from expr import evaluate, to_postfix, tokenize


def test_tokenize():
    assert tokenize("12 + 3.5*(2-1)") == [12.0, "+", 3.5, "*", "(", 2.0, "-", 1.0, ")"]
    try:
        tokenize("2 ^ 3")
    except ValueError as error:
        assert "'^'" in str(error)
    else:
        raise AssertionError("unknown characters must be refused")


def test_to_postfix():
    assert to_postfix(tokenize("1 + 2 * 3")) == [1.0, 2.0, 3.0, "*", "+"]
    assert to_postfix(tokenize("(1 + 2) * 3")) == [1.0, 2.0, "+", 3.0, "*"]
    assert to_postfix(tokenize("8 - 2 - 1")) == [8.0, 2.0, "-", 1.0, "-"]
    for bad in ("(1 + 2", "1 + 2)"):
        try:
            to_postfix(tokenize(bad))
        except ValueError:
            pass
        else:
            raise AssertionError(f"{bad!r} must be refused")


def test_evaluate():
    assert evaluate("1 + 2 * 3") == 7
    assert evaluate("(1 + 2) * 3") == 9
    assert evaluate("8 / 4 / 2") == 1
    assert evaluate("10 - 4 - 3") == 3
