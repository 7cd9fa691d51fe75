from importer import PRODUCT, import_csv, parse_row, unknown_columns

CSV = """sku,price,stock,active
A-1,9.99,5,yes
B-2,abc,1,no
,1.00,,
C-3,0.5,,
"""


def test_parse_row():
    assert parse_row({"sku": "X", "price": " 2.5 ", "stock": "", "active": "no"}, PRODUCT) == {
        "sku": "X", "price": 2.5, "stock": 0, "active": False}


def test_import_csv():
    records, errors = import_csv(CSV)
    assert records == [{"sku": "A-1", "price": 9.99, "stock": 5, "active": True},
                       {"sku": "C-3", "price": 0.5, "stock": 0, "active": True}]
    assert errors == [(3, "price: 'abc' is not a float"), (4, "missing: sku")]


def test_unknown_columns():
    assert unknown_columns(["sku", "price", "colour", "size"], PRODUCT) == ["colour", "size"]
