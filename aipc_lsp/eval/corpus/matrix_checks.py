from matrix import determinant, identity, multiply, rotate_clockwise, transpose


def test_identity_and_transpose():
    assert identity(3) == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]


def test_multiply():
    assert multiply([[1, 2], [3, 4]], [[5, 6], [7, 8]]) == [[19, 22], [43, 50]]
    assert multiply([[1, 2, 3]], [[1], [1], [1]]) == [[6]]
    try:
        multiply([[1, 2]], [[1, 2]])
    except ValueError:
        pass
    else:
        raise AssertionError("mismatched sizes must fail")


def test_rotate_clockwise():
    assert rotate_clockwise([[1, 2], [3, 4]]) == [[3, 1], [4, 2]]
    assert rotate_clockwise([[1, 2, 3]]) == [[1], [2], [3]]


def test_determinant():
    assert abs(determinant([[2, 0], [0, 3]]) - 6) < 1e-9
    assert abs(determinant([[0, 1], [1, 0]]) + 1) < 1e-9
    assert abs(determinant([[1, 2, 3], [4, 5, 6], [7, 8, 10]]) + 3) < 1e-9
    assert determinant([[1, 2], [2, 4]]) == 0.0
