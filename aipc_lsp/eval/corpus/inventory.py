"""Stock levels of a small shop."""


class OutOfStock(Exception):
    pass


class Inventory:
    def __init__(self):
        self.quantities = {}

    def add(self, item, quantity):
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        self.quantities[item] = self.quantities.get(item, 0) + quantity

    def remove(self, item, quantity):
        available = self.quantities.get(item, 0)
        if quantity > available:
            raise OutOfStock(f"{item}: {available} left, {quantity} asked")
        if quantity == available:
            del self.quantities[item]
        else:
            self.quantities[item] = available - quantity

    def total_value(self, prices):
        """The stock's value at `prices` (item -> unit price)."""
        return sum(prices[item] * quantity for item, quantity in self.quantities.items())

    def low_stock(self, threshold):
        """Items with fewer than `threshold` units, sorted by name."""
        return sorted(item for item, quantity in self.quantities.items() if quantity < threshold)

    def restock_order(self, targets):
        """What to order to bring each item up to its target level (item -> units)."""
        order = {}
        for item, target in targets.items():
            missing = target - self.quantities.get(item, 0)
            if missing > 0:
                order[item] = missing
        return order
