"""Laying out widgets on a page."""

from geometry import Box, bounding_box, box_contains, inset, overlap_area


def stack_vertically(sizes, page_width, gap=0):
    """Boxes for widgets of (width, height) sizes, one under the other, centred on the page."""
    boxes = []
    top = 0
    for width, height in sizes:
        left = (page_width - width) / 2
        boxes.append(Box(left, top, width, height))
        top += height + gap
    return boxes


def content_area(page, margin):
    return inset(page, margin)


def widget_at(boxes, point):
    """Index of the last box (the topmost drawn) under the point, or None."""
    for index in range(len(boxes) - 1, -1, -1):
        if box_contains(boxes[index], point):
            return index
    return None


def collisions(boxes):
    """Pairs of indices of boxes that overlap with a positive area."""
    pairs = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if overlap_area(boxes[i], boxes[j]) > 0:
                pairs.append((i, j))
    return pairs


def selection_bounds(boxes):
    corners = []
    for box in boxes:
        corners += [(box.left, box.top), (box.right, box.bottom)]
    return bounding_box(corners)
