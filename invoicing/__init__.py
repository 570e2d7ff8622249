"""Buyer invoices: drafts, finalization, the lifecycle after it, credit notes, and
closing a month for every organization.

What an invoice bills is what the ledger charged the buyer, never a second opinion:

- usage rated by pricing.rating, read from the accrual projection (invoicing.accruals):
  one line per fine-tune job and price, per inference model and token kind, per GPU
  model and lease price; each line keeps the journal entries it carries
  (``InvoiceLineEntry``: entry position, transfer id, amount);
- other charges the journal holds against the buyer's credit or receivable that
  credit revenue, fees or a provider's payable (a lease hold settled, a fine-tune
  minimum, a finance correction), one line per GPU model or description.

Amounts: each line is the exact sum of its journal amounts (micro-units), rounded
half-even to the currency's minor unit; the difference goes to the platform's
``rounding`` account when the invoice is finalized, with the tax (the org's rate,
to ``tax_payable``) and the prepaid credit applied to what usage left owed — one
journal entry, ``invoice:<key>``. So the ledger agrees with every invoice to the cent.

Lifecycle: ``draft`` (recomputed on every refresh, until the period's grace ends)
→ ``open`` (finalized: immutable, numbered ``<issuer>-000042`` from a gap-free
sequence: the number is taken by locking the sequence row in the finalizing
transaction, so a failed finalization gives it back) → ``paid`` / ``void`` /
``uncollectible``, with ``past_due`` set by dunning. Corrections after
finalization are credit notes. Every step is an event on the stream
``invoice:<key>``; ``invoices_rebuild`` replays them, recomputes each finalized
invoice from the accruals and the journal as of its finalization, and checks the
result against the hash its InvoiceFinalized event recorded.
"""
