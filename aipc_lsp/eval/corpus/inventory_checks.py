from inventory import Inventory, OutOfStock


def stocked():
    inventory = Inventory()
    inventory.add("apple", 10)
    inventory.add("pear", 3)
    inventory.add("apple", 5)
    return inventory


def test_add_and_remove():
    inventory = stocked()
    assert inventory.quantities == {"apple": 15, "pear": 3}
    inventory.remove("pear", 3)
    inventory.remove("apple", 4)
    assert inventory.quantities == {"apple": 11}
    try:
        inventory.remove("apple", 12)
    except OutOfStock as error:
        assert "11 left" in str(error)
    else:
        raise AssertionError("removing more than the stock must fail")
    try:
        inventory.add("plum", 0)
    except ValueError:
        pass
    else:
        raise AssertionError("adding nothing must fail")


def test_total_value():
    assert stocked().total_value({"apple": 2, "pear": 5}) == 45


def test_low_stock():
    inventory = stocked()
    inventory.add("fig", 1)
    assert inventory.low_stock(4) == ["fig", "pear"]


def test_restock_order():
    assert stocked().restock_order({"apple": 20, "pear": 2, "kiwi": 4}) == {"apple": 5, "kiwi": 4}
