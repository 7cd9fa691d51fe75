"""Amounts of money in integer cents, never floats."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str = "EUR"

    def plus(self, other):
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.cents + other.cents, self.currency)

    def times(self, factor):
        return Money(round(self.cents * factor), self.currency)


def parse_amount(text, currency="EUR"):
    """'12.50' or '12,50' -> Money(1250)."""
    whole, _, fraction = text.strip().replace(",", ".").partition(".")
    return Money(int(whole) * 100 + int((fraction + "00")[:2]), currency)


def format_money(amount):
    sign = "-" if amount.cents < 0 else ""
    units, cents = divmod(abs(amount.cents), 100)
    return f"{sign}{units}.{cents:02d} {amount.currency}"


def split_evenly(amount, parts):
    """`parts` amounts that add up to `amount` exactly, the first ones a cent larger."""
    share, remainder = divmod(amount.cents, parts)
    return [Money(share + (1 if i < remainder else 0), amount.currency) for i in range(parts)]


def zero(currency="EUR"):
    return Money(0, currency)
