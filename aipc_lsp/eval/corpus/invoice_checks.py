from invoice import Invoice
from money import Money


def sample():
    invoice = Invoice(tax_rate=0.1)
    invoice.add_line("coffee", 3, "2.50")
    invoice.add_line("cake", 2, "4,20")
    return invoice


def test_totals():
    invoice = sample()
    assert invoice.lines[1] == ("cake", 2, Money(420))
    assert invoice.subtotal() == Money(1590)
    assert invoice.tax() == Money(159)
    assert invoice.total() == Money(1749)


def test_shares():
    shares = sample().shares(["ann", "bob", "cy"])
    assert shares == {"ann": Money(583), "bob": Money(583), "cy": Money(583)}
    shares = sample().shares(["ann", "bob"])
    assert shares == {"ann": Money(875), "bob": Money(874)}


def test_render():
    lines = sample().render().split("\n")
    assert lines[0].startswith("coffee") and lines[0].endswith("7.50 EUR")
    assert "2.50 EUR" in lines[0]
    assert lines[-1].startswith("total") and lines[-1].endswith("17.49 EUR")
