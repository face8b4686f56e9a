"""The vendor-neutral core: ledger, durable downloads, the delivery engine, HTTP, logs, errors."""
