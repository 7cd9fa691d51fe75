from geometry import Box
from layout import collisions, content_area, selection_bounds, stack_vertically, widget_at


def test_stack_vertically():
    boxes = stack_vertically([(40, 10), (60, 20)], page_width=100, gap=5)
    assert boxes == [Box(30, 0, 40, 10), Box(20, 15, 60, 20)]


def test_content_area():
    assert content_area(Box(0, 0, 100, 50), 10) == Box(10, 10, 80, 30)
    assert content_area(Box(0, 0, 10, 10), 8) == Box(8, 8, 0, 0)


def test_widget_at():
    boxes = [Box(0, 0, 50, 50), Box(25, 25, 50, 50)]
    assert widget_at(boxes, (30, 30)) == 1
    assert widget_at(boxes, (10, 10)) == 0
    assert widget_at(boxes, (90, 90)) is None


def test_collisions():
    boxes = [Box(0, 0, 10, 10), Box(5, 5, 10, 10), Box(10, 0, 5, 10), Box(40, 40, 1, 1)]
    assert collisions(boxes) == [(0, 1), (1, 2)]


def test_selection_bounds():
    assert selection_bounds([Box(10, 10, 5, 5), Box(0, 20, 3, 30)]) == Box(0, 10, 15, 40)
