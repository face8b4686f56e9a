"""College Board: the API client, notifications to deliveries, listing reconciliation."""
