"""Points and axis-aligned boxes."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    left: float
    top: float
    width: float
    height: float

    @property
    def right(self):
        return self.left + self.width

    @property
    def bottom(self):
        return self.top + self.height


def bounding_box(points):
    """The smallest Box holding every (x, y) point."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    return Box(min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


def box_contains(box, point):
    x, y = point
    return box.left <= x <= box.right and box.top <= y <= box.bottom


def overlap_area(first, second):
    width = min(first.right, second.right) - max(first.left, second.left)
    height = min(first.bottom, second.bottom) - max(first.top, second.top)
    return max(0, width) * max(0, height)


def inset(box, margin):
    """The box shrunk by `margin` on every side (never below zero size)."""
    width = max(0, box.width - 2 * margin)
    height = max(0, box.height - 2 * margin)
    return Box(box.left + margin, box.top + margin, width, height)
