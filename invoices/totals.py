"""Money: every amount of an invoice is computed here, once, in Decimal."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def round_money(value: Decimal) -> Decimal:
    """Rounds to cents, half up (0.005 -> 0.01), as invoices are read by people."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class LineAmounts:
    net: Decimal
    tax: Decimal

    @property
    def gross(self) -> Decimal:
        return self.net + self.tax


@dataclass(frozen=True)
class Totals:
    lines: tuple[LineAmounts, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal


def line_amounts(quantity: Decimal, unit_price: Decimal, tax_rate: Decimal) -> LineAmounts:
    net = round_money(Decimal(quantity) * Decimal(unit_price))
    return LineAmounts(net=net, tax=round_money(net * Decimal(tax_rate)))


def compute_totals(lines) -> Totals:
    """Totals of lines having quantity, unit_price and tax_rate.

    Each line is rounded on its own, and the totals are sums of rounded lines, so the
    printed lines always add up to the printed totals.
    """
    amounts = tuple(line_amounts(line.quantity, line.unit_price, line.tax_rate) for line in lines)
    subtotal = sum((a.net for a in amounts), Decimal("0.00"))
    tax = sum((a.tax for a in amounts), Decimal("0.00"))
    return Totals(lines=amounts, subtotal=subtotal, tax=tax, total=subtotal + tax)
