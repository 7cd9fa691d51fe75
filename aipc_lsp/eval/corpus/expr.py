"""Arithmetic expressions: a tokenizer and a shunting-yard evaluator."""

import operator

OPERATORS = {"+": (1, operator.add), "-": (1, operator.sub), "*": (2, operator.mul), "/": (2, operator.truediv)}


def tokenize(text):
    """Numbers (as floats), operators and parentheses; ValueError on anything else."""
    tokens = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char.isdigit() or char == ".":
            start = i
            while i < len(text) and (text[i].isdigit() or text[i] == "."):
                i += 1
            tokens.append(float(text[start:i]))
        elif char in OPERATORS or char in "()":
            tokens.append(char)
            i += 1
        else:
            raise ValueError(f"unexpected {char!r} at {i}")
    return tokens


def to_postfix(tokens):
    """Infix tokens to reverse Polish notation (left-associative operators)."""
    output = []
    stack = []
    for token in tokens:
        if isinstance(token, float):
            output.append(token)
        elif token == "(":
            stack.append(token)
        elif token == ")":
            while stack and stack[-1] != "(":
                output.append(stack.pop())
            if not stack:
                raise ValueError("unbalanced parentheses")
            stack.pop()
        else:
            while stack and stack[-1] != "(" and OPERATORS[stack[-1]][0] >= OPERATORS[token][0]:
                output.append(stack.pop())
            stack.append(token)
    while stack:
        token = stack.pop()
        if token == "(":
            raise ValueError("unbalanced parentheses")
        output.append(token)
    return output


def evaluate(text):
    stack = []
    for token in to_postfix(tokenize(text)):
        if isinstance(token, float):
            stack.append(token)
            continue
        right = stack.pop()
        left = stack.pop()
        stack.append(OPERATORS[token][1](left, right))
    if len(stack) != 1:
        raise ValueError("malformed expression")
    return stack[0]
