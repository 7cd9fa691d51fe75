"""Matrices as lists of rows."""


def identity(n):
    return [[1 if row == col else 0 for col in range(n)] for row in range(n)]


def transpose(matrix):
    return [list(column) for column in zip(*matrix)]


def multiply(left, right):
    if len(left[0]) != len(right):
        raise ValueError("inner dimensions differ")
    columns = transpose(right)
    return [[sum(a * b for a, b in zip(row, column)) for column in columns] for row in left]


def rotate_clockwise(matrix):
    """A quarter turn to the right."""
    return [list(row) for row in zip(*matrix[::-1])]


def determinant(matrix):
    """By Gaussian elimination with partial pivoting (floats)."""
    rows = [list(map(float, row)) for row in matrix]
    n = len(rows)
    result = 1.0
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-12:
            return 0.0
        if pivot != col:
            rows[col], rows[pivot] = rows[pivot], rows[col]
            result = -result
        result *= rows[col][col]
        for r in range(col + 1, n):
            factor = rows[r][col] / rows[col][col]
            for c in range(col, n):
                rows[r][c] -= factor * rows[col][c]
    return result
