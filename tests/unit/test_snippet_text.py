"""Completion items as snippets: escaped, later lines relative to the cursor line."""

from aipc_lsp.features.completion import _as_snippet


def test_special_characters_are_escaped():
    assert _as_snippet('price = f"${cost}" \\ 2', "") == 'price = f"\\${cost\\}" \\\\ 2'


def test_later_lines_are_relative_to_the_cursor_line():
    text = "self.items.append(item)\n        return self\n    # dedented"
    assert _as_snippet(text, "        ") == "self.items.append(item)\nreturn self\n# dedented"
