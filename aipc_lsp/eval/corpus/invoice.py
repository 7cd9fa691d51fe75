"""Invoices: lines of quantity x unit price, tax, and how to share the bill."""

from money import format_money, parse_amount, split_evenly, zero


class Invoice:
    def __init__(self, currency="EUR", tax_rate=0.2):
        self.currency = currency
        self.tax_rate = tax_rate
        self.lines = []

    def add_line(self, description, quantity, unit_price):
        """`unit_price` as written on the order form, e.g. "4.20"."""
        price = parse_amount(unit_price, self.currency)
        self.lines.append((description, quantity, price))

    def subtotal(self):
        total = zero(self.currency)
        for _, quantity, price in self.lines:
            total = total.plus(price.times(quantity))
        return total

    def tax(self):
        return self.subtotal().times(self.tax_rate)

    def total(self):
        return self.subtotal().plus(self.tax())

    def shares(self, people):
        """What each of `people` pays; the shares add up to the total exactly."""
        amounts = split_evenly(self.total(), len(people))
        return dict(zip(people, amounts))

    def render(self):
        rows = []
        for description, quantity, price in self.lines:
            amount = format_money(price.times(quantity))
            rows.append(f"{description:<20}{quantity:>4} x {format_money(price):>12} = {amount:>12}")
        rows.append(f"{'total':<20}{format_money(self.total()):>35}")
        return "\n".join(rows)
